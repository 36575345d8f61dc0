"""The generic contract every solver must keep (solvers/base.py), as reusable checks.

Used by tests/test_solvers_common.py (every registered solver) and by
`python -m bench check-solver mymodule:MySolver` (a user's solver outside the package). A solver runs,
with its class `smoke` overrides unless told otherwise, on the exact Gaussian prior at 3x32x32 for each
Table 1 task it supports (`supports(A)`), and is checked for:

* ``output``: finite, of the image shape, float32, in [-1, 1];
* ``nfe``: the NFE counted by the prior during a solve = `budget()` per image x batch;
* ``determinism``: the same generators give a bit-identical output;
* ``batch-independence``: image i solved alone = image i solved in a batch of 4 (per-image generators
  and per-image operator seeds), to 1e-5.

Each check returns a `CheckResult` (name, ok, message); nothing here raises for a solver's failure.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

import operators
from bench.errors import BenchError
from solvers.base import Solver

TABLE1_TASKS = ("inpaint_random", "deblur_gaussian", "deblur_motion", "sr4")
IMAGE_SIZE = 32
BATCH = 4
ALONE = 2  # the image solved on its own (not the first, to catch offset bugs)
SIGMA_Y = 0.05
TOLERANCE = 1e-5

Tensor = torch.Tensor
SolverFactory = Callable[[torch.nn.Module, str], Solver]


@dataclass(frozen=True)
class CheckResult:
    """One named check: `name` is "<task>: <check>"; `message` says what went wrong (empty when ok)."""

    name: str
    ok: bool
    message: str = ""
    skipped: bool = False  # not run (the solver does not support the task); counts as ok

    def line(self) -> str:
        status = "SKIP" if self.skipped else "PASS" if self.ok else "FAIL"
        return f"{status} {self.name}" + (f": {self.message}" if self.message else "")


@dataclass
class BatchRun:
    """A batch solved twice with the same generators: outputs, counted NFE after the first, budget."""

    first: Tensor
    second: Tensor
    counted: dict[str, int]
    budget: dict[str, int] | None
    budget_error: str = ""


# ------------------------------------------------------------------------------ fixtures
@functools.lru_cache(maxsize=4)
def gaussian_prior(image_size: int = IMAGE_SIZE) -> torch.nn.Module:
    """The exact embedded Gaussian prior (priors/gaussian.py) at image_size x image_size."""
    from priors.gaussian import embedded
    return embedded(image_size)


def image_shape(prior: torch.nn.Module) -> tuple[int, int, int]:
    return tuple(int(s) for s in prior.image_shape)  # type: ignore[return-value]


def operator(task: str, seeds: Sequence[int], shape: tuple[int, int, int]) -> operators.Operator:
    return operators.get(task, image_shape=shape, seeds=list(seeds), sigma_y=SIGMA_Y)


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(1000 + s) for s in seeds]


def measurement(prior: torch.nn.Module, task: str, batch: int = BATCH) -> tuple[Tensor, Tensor]:
    """(x, y) for images 0..batch-1, image i sampled from the prior and measured from its own seed."""
    seeds = list(range(batch))
    sample = getattr(prior, "sample", None)
    if callable(sample):
        x = sample(batch, [torch.Generator().manual_seed(s) for s in seeds]).clamp(-1, 1)
    else:  # a prior without sampling: uniform random images in [-0.8, 0.8], one stream per image
        x = torch.stack([torch.rand(image_shape(prior), generator=torch.Generator().manual_seed(s))
                         for s in seeds]) * 1.6 - 0.8
    y = operator(task, seeds, image_shape(prior)).measure(x, [torch.Generator().manual_seed(500 + s) for s in seeds])
    return x, y


def class_factory(cls: type[Solver], smoke: bool = True, **overrides: Any) -> SolverFactory:
    """Build `cls(prior, task=task, **cls.smoke, **overrides)` (smoke=False: without the smoke overrides)."""
    def make(prior: torch.nn.Module, task: str) -> Solver:
        return cls(prior, task=task, **{**(cls.smoke if smoke else {}), **overrides})
    return make


def supported(make: SolverFactory, prior: torch.nn.Module, task: str) -> bool:
    return make(prior, task).supports(operator(task, [0], image_shape(prior)))


# ------------------------------------------------------------------------------ runs
def batch_run(make: SolverFactory, prior: torch.nn.Module, task: str, y: Tensor | None = None) -> BatchRun:
    """Solve images 0..B-1 twice with the same generators; keep both outputs and the counted NFE."""
    if y is None:
        y = measurement(prior, task)[1]
    batch = y.shape[0]
    A = operator(task, range(batch), image_shape(prior))
    solver = make(prior, task)
    first = solver.solve(y, A, generators(range(batch)))
    counted = solver.prior.nfe.as_dict()
    second = solver.solve(y, A, generators(range(batch)))
    try:
        budget, error = solver.budget(), ""
    except Exception as err:  # noqa: BLE001 - a user's budget() may raise anything; report it
        budget, error = None, f"budget() raised {type(err).__name__}: {err}"
    return BatchRun(first=first, second=second, counted=counted, budget=budget, budget_error=error)


def solve_alone(make: SolverFactory, prior: torch.nn.Module, task: str, y: Tensor, index: int = ALONE) -> Tensor:
    """Image `index` solved as a batch of one (its own operator seed and generator)."""
    A = operator(task, [index], image_shape(prior))
    return make(prior, task).solve(y[index:index + 1], A, generators([index]))


# ------------------------------------------------------------------------------ checks
def check_output(run: BatchRun, shape: tuple[int, ...], task: str) -> CheckResult:
    out, name = run.first, f"{task}: output finite, shaped, in [-1, 1]"
    if tuple(out.shape) != tuple(shape):
        return CheckResult(name, False, f"output shape {tuple(out.shape)}, expected {tuple(shape)}")
    if out.dtype != torch.float32:
        return CheckResult(name, False, f"output dtype {out.dtype}, expected torch.float32")
    bad = int((~torch.isfinite(out)).sum())
    if bad:
        return CheckResult(name, False, f"{bad} non-finite values")
    lo, hi = float(out.min()), float(out.max())
    if lo < -1 or hi > 1:
        return CheckResult(name, False, f"values in [{lo:.4g}, {hi:.4g}], expected within [-1, 1]")
    return CheckResult(name, True)


def check_nfe(run: BatchRun, batch: int, task: str) -> CheckResult:
    name = f"{task}: counted NFE == budget()"
    if run.budget is None:
        return CheckResult(name, False, run.budget_error)
    want = {k: v * batch for k, v in run.budget.items()}
    if run.counted != want:
        return CheckResult(name, False, f"counted {run.counted} for {batch} images, budget() {run.budget} "
                                        f"per image x {batch} = {want}")
    return CheckResult(name, True)


def check_determinism(run: BatchRun, task: str) -> CheckResult:
    name = f"{task}: same generators -> identical output"
    if not torch.equal(run.first, run.second):
        diff = (run.first - run.second).abs().nan_to_num(float("inf")).max().item()
        return CheckResult(name, False, f"two solves with the same generators differ by up to {diff:.3g} "
                                        "(draw noise only from the `rng` argument)")
    return CheckResult(name, True)


def check_batch_independence(batch_out: Tensor, alone_out: Tensor, task: str, index: int = ALONE,
                             tol: float = TOLERANCE) -> CheckResult:
    name = f"{task}: image alone == image in a batch"
    err = (alone_out[0] - batch_out[index]).abs().nan_to_num(float("inf")).max().item()
    if not err <= tol:
        return CheckResult(name, False, f"image {index} alone differs from its result in a batch of "
                                        f"{batch_out.shape[0]} by {err:.3g} > {tol:g} (no batch-wide "
                                        "statistics; one generator per image)")
    return CheckResult(name, True)


def check_task(make: SolverFactory, prior: torch.nn.Module, task: str) -> list[CheckResult]:
    """All four checks for one task; a solve that raises fails them with the exception's message."""
    _, y = measurement(prior, task)
    try:
        run = batch_run(make, prior, task, y)
    except Exception as err:  # noqa: BLE001 - a user's solver may raise anything; report it
        return [CheckResult(f"{task}: solve", False, f"raised {type(err).__name__}: {err}")]
    results = [check_output(run, (y.shape[0], *image_shape(prior)), task), check_nfe(run, y.shape[0], task),
               check_determinism(run, task)]
    try:
        alone = solve_alone(make, prior, task, y)
    except Exception as err:  # noqa: BLE001
        results.append(CheckResult(f"{task}: image alone == image in a batch", False,
                                   f"solving one image raised {type(err).__name__}: {err}"))
    else:
        results.append(check_batch_independence(run.first, alone, task))
    return results


def check_solver(make: SolverFactory, prior: torch.nn.Module | None = None,
                 tasks: Sequence[str] = TABLE1_TASKS) -> list[CheckResult]:
    """Every check on every task of `tasks` the solver supports; tasks it does not support are skipped
    (one passing line says so); a solver that supports none of them fails."""
    prior = prior if prior is not None else gaussian_prior()
    results: list[CheckResult] = []
    runs = 0
    for task in tasks:
        try:
            ok = supported(make, prior, task)
        except Exception as err:  # noqa: BLE001
            results.append(CheckResult(f"{task}: build", False, f"raised {type(err).__name__}: {err}"))
            continue
        if not ok:
            results.append(CheckResult(task, True, "supports(A) is False for this task", skipped=True))
            continue
        runs += 1
        results.extend(check_task(make, prior, task))
    if not runs and not any(not r.ok for r in results):
        results.append(CheckResult("supports a task", False, f"supports(A) is False for every task of {list(tasks)}"))
    return results


# ------------------------------------------------------------------------------ user code
def load_solver_class(spec: str) -> type[Solver]:
    """'module:Class' or 'path/to/file.py:Class' -> the Solver subclass; BenchError naming the problem."""
    from bench.protocol import import_user_module

    module_name, sep, class_name = spec.rpartition(":")
    if not sep or not module_name or not class_name:
        raise BenchError(f"{spec!r}: expected module:Class (e.g. mymodule:MySolver or path/to/file.py:MySolver)")
    module = import_user_module(module_name, f"check-solver {spec}")
    cls = getattr(module, class_name, None)
    if cls is None:
        found = sorted(n for n, v in vars(module).items()
                       if isinstance(v, type) and issubclass(v, Solver) and v is not Solver)
        raise BenchError(f"check-solver {spec}: module {module_name!r} has no class {class_name!r}"
                         + (f"; its Solver subclasses: {', '.join(found)}" if found else
                            "; it defines no Solver subclass"))
    if not isinstance(cls, type) or not issubclass(cls, Solver) or cls is Solver:
        raise BenchError(f"check-solver {spec}: {class_name} is not a subclass of solvers.Solver; derive it from "
                         "solvers.Solver (see solvers/base.py)")
    return cls
