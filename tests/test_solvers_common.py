"""The contract every registered solver must keep (solvers/base.py), on the exact Gaussian prior.

Parametrised over `solvers.available()` x the SPGD Table 1 tasks, so a new solver is covered as soon as
its module lands. Each solver runs with its `smoke` overrides on 3x32x32 images:
* output finite, of the image shape, in [-1, 1];
* counted NFE (prior.nfe after solve) = solver.budget() per image x batch;
* same generators -> bit-identical output; image i alone = image i in a batch of 4 (per-image generators
  and per-image operator seeds), to 1e-5;
* registry: a Solver subclass defined here is returned by `solvers.get` and listed; unknown solver /
  hyper-parameter -> SolverError naming it; unsupported task -> UnsupportedTask.
"""
from __future__ import annotations

import functools

import pytest
import torch

import operators
import solvers
import solvers.base as solver_base
from priors.gaussian import embedded
from solvers import Solver, SolverError, UnsupportedTask

TABLE1_TASKS = ("inpaint_random", "deblur_gaussian", "deblur_motion", "sr4")
SHAPE = (3, 32, 32)
BATCH = 4
ALONE = 2  # the image solved on its own (not the first, to catch offset bugs)
SIGMA_Y = 0.05


@functools.lru_cache(maxsize=1)
def prior():
    return embedded(SHAPE[-1])


def operator(task: str, seeds: list[int]):
    return operators.get(task, image_shape=SHAPE, seeds=seeds, sigma_y=SIGMA_Y)


def generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(1000 + s) for s in seeds]


@functools.lru_cache(maxsize=None)
def measurement(task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) for images 0..BATCH-1, image i drawn and measured from its own seed."""
    seeds = list(range(BATCH))
    x = prior().sample(BATCH, [torch.Generator().manual_seed(s) for s in seeds]).clamp(-1, 1)
    y = operator(task, seeds).measure(x, [torch.Generator().manual_seed(500 + s) for s in seeds])
    return x, y


def smoke_solver(name: str, task: str) -> Solver:
    cls = solver_base._REGISTRY[name]
    return solvers.get(name, prior(), task=task, **cls.smoke)


def supported(name: str, task: str) -> bool:
    return smoke_solver(name, task).supports(operator(task, [0]))


@functools.lru_cache(maxsize=None)
def batch_run(name: str, task: str) -> dict:
    """Solve the batch twice with the same generators; record outputs and counted NFE."""
    solver = smoke_solver(name, task)
    _, y = measurement(task)
    A = operator(task, list(range(BATCH)))
    first = solver.solve(y, A, generators(list(range(BATCH))))
    counted = solver.prior.nfe.as_dict()
    second = solver.solve(y, A, generators(list(range(BATCH))))
    return {"first": first, "second": second, "counted": counted, "budget": solver.budget()}


ALL_CASES = [(name, task) for name in solvers.available() for task in TABLE1_TASKS]
CASES = [case for case in ALL_CASES if supported(*case)]
UNSUPPORTED = [case for case in ALL_CASES if not supported(*case)]


@pytest.mark.parametrize("name,task", CASES)
def test_output_finite_shaped_in_range(name, task):
    out = batch_run(name, task)["first"]
    assert out.shape == (BATCH, *SHAPE), f"{name}/{task}: output shape {tuple(out.shape)}"
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all(), f"{name}/{task}: non-finite output"
    assert out.min() >= -1 and out.max() <= 1


@pytest.mark.parametrize("name,task", CASES)
def test_counted_nfe_equals_budget(name, task):
    run = batch_run(name, task)
    per_image = {k: v * BATCH for k, v in run["budget"].items()}
    assert run["counted"] == per_image, f"{name}/{task}: counted {run['counted']} != budget x {BATCH} {per_image}"


@pytest.mark.parametrize("name,task", CASES)
def test_same_generators_bit_identical(name, task):
    run = batch_run(name, task)
    assert torch.equal(run["first"], run["second"]), f"{name}/{task}: two runs with the same generators differ"


@pytest.mark.parametrize("name,task", CASES)
def test_image_alone_equals_image_in_batch(name, task):
    batch = batch_run(name, task)["first"]
    _, y = measurement(task)
    alone = smoke_solver(name, task).solve(y[ALONE:ALONE + 1], operator(task, [ALONE]), generators([ALONE]))
    err = (alone[0] - batch[ALONE]).abs().max().item()
    assert err <= 1e-5, f"{name}/{task}: image {ALONE} alone differs from its result in a batch by {err:.2e}"


@pytest.mark.parametrize("name,task", UNSUPPORTED or [pytest.param("", "", marks=pytest.mark.skip("none"))])
def test_unsupported_task_raises(name, task):
    _, y = measurement(task)
    with pytest.raises(UnsupportedTask, match=name):
        smoke_solver(name, task).solve(y, operator(task, list(range(BATCH))))


@pytest.mark.parametrize("name", solvers.available())
def test_unknown_hyper_parameter_is_named(name):
    with pytest.raises(SolverError, match="no_such_knob"):
        solvers.get(name, prior(), task="inpaint_random", no_such_knob=1)


def test_unknown_solver_is_named():
    with pytest.raises(SolverError, match="no_such_solver"):
        solvers.get("no_such_solver", prior())


def test_every_solver_has_a_budget_and_sources():
    for name in solvers.available():
        solver = smoke_solver(name, "inpaint_random")
        budget = solver.budget()
        assert set(budget) == {"nfe_forward", "nfe_backward"}, name
        assert all(isinstance(v, int) and v >= 0 for v in budget.values()), (name, budget)
        assert all(isinstance(s, str) and s for s in solver.sources.values()), (name, solver.sources)


def test_user_defined_solver_registers(monkeypatch):
    monkeypatch.setattr(solver_base, "_REGISTRY", dict(solver_base._REGISTRY))

    class AdjointOnly(Solver):
        """A^T y: no network; only inpainting (to exercise UnsupportedTask)."""

        name = "test_adjoint_only"
        tasks = ("inpaint_random",)
        defaults = {"gain": {"value": 1.0, "source": "chosen by us: test"}}

        def budget(self):
            return {"nfe_forward": 0, "nfe_backward": 0}

        def _solve(self, y, A, rng):
            return self.gain * A.adjoint(y)

    assert "test_adjoint_only" in solvers.available()
    solver = solvers.get("test_adjoint_only", prior(), task="inpaint_random", gain=0.5)
    assert isinstance(solver, AdjointOnly) and solver.gain == 0.5 and solver.sources["gain"] == "override"
    x, y = measurement("inpaint_random")
    A = operator("inpaint_random", list(range(BATCH)))
    assert torch.equal(solver.solve(y, A), (0.5 * A.adjoint(y)).clamp(-1, 1))
    with pytest.raises(UnsupportedTask, match="sr4"):
        solver.solve(measurement("sr4")[1], operator("sr4", list(range(BATCH))))
    with pytest.raises(SolverError, match="gian"):
        solvers.get("test_adjoint_only", prior(), gian=2.0)
