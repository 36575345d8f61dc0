"""The `Solver` interface, its registry and its hyper-parameter files (design.md "Solver").

A solver is one subclass with a class attribute `name`; defining it registers it (also from a
user's own module), so it appears in `solvers.available()` and in the harness:

    class MySolver(Solver):
        name = "mine"
        def _solve(self, y, A, rng):
            ...
            return x_hat

`solvers.get(name, prior, task=..., dataset=..., **overrides)` builds it with the hyper-parameters
of `solvers/configs/<name>.yaml`, resolved in this order (later wins):

    params  <  tasks[task].params  <  datasets[dataset].params  <  datasets[dataset].tasks[task].params  <  overrides

Every entry is `{value: ..., source: "..."}`: a paper table, a repo config file, or
"chosen by us: <why>". Unknown override keys are an error naming the valid keys. A subclass may
also define `defaults` (same form) for solvers without a YAML file (e.g. in tests).

`solve(y, A, generator=None)` returns x_hat of the image shape, in [-1, 1]. `generator` is a
torch.Generator or a list with one generator per image (the harness passes a list, so image i's
result is independent of the rest of the batch). Images whose result is not finite are reported by
the harness as diverged; a solver that detects divergence early raises `SolverDiverged`.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
import yaml

from operators.base import Operator, OperatorError, randn_per_image
from priors.base import DiffusionPrior

Tensor = torch.Tensor
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_REGISTRY: dict[str, type["Solver"]] = {}


class SolverError(ValueError):
    """Bad solver input: unknown solver, unknown hyper-parameter, unsupported task."""


class UnsupportedTask(SolverError):
    """The solver cannot run this task (e.g. DDRM needs an SVD; motion blur has none)."""


class SolverDiverged(RuntimeError):
    """The iterate became NaN/inf; the harness records a 'diverged' row and goes on."""


class RNG:
    """Per-image random streams: image i's noise comes from generator i.

    `repeat(n)` gives the streams of a batch of B*n rows in which image i's n copies are adjacent
    (DPPS candidates): the n rows of image i are drawn from generator i in one call.
    """

    def __init__(self, generator: torch.Generator | Sequence[torch.Generator] | None, batch: int,
                 copies: int = 1) -> None:
        if generator is not None and not isinstance(generator, torch.Generator) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch}")
        self.generator = generator
        self.batch = batch
        self.copies = copies

    def randn_like(self, x: Tensor) -> Tensor:
        if self.copies == 1:
            return randn_per_image(x, self.generator)
        if x.shape[0] != self.batch * self.copies:
            raise ValueError(f"expected {self.batch} x {self.copies} rows, got {x.shape[0]}")
        grouped = x.new_empty((self.batch, self.copies * x[0].numel()))
        return randn_per_image(grouped, self.generator).view_as(x)

    def randn(self, per_image_shape: Sequence[int], like: Tensor) -> Tensor:
        """(B * copies, *per_image_shape) standard normal, dtype/device of `like`."""
        return self.randn_like(like.new_empty((self.batch * self.copies, *per_image_shape)))

    def repeat(self, n: int) -> "RNG":
        """Streams for a batch of B*n rows, image i's n copies adjacent and drawn from generator i."""
        return RNG(self.generator, self.batch, self.copies * n)


class Solver:
    """Base class of every solver."""

    name: ClassVar[str] = ""
    #: tasks this solver runs; None means every task whose operator offers what it needs
    tasks: ClassVar[tuple[str, ...] | None] = None
    #: hyper-parameters for solvers without a YAML file, same {value, source} form
    defaults: ClassVar[dict[str, Any]] = {}
    #: overrides for smoke runs (CI smoke protocol, generic tests): fewer steps, same algorithm
    smoke: ClassVar[dict[str, Any]] = {}
    #: inside `solve`, the on-device divergence flag is read back every `check_every` `check_finite`
    #: calls and at the end (one host sync per check_every steps, bench/device_audit.py)
    check_every: ClassVar[int] = 10

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            have = _REGISTRY.get(cls.name)
            if have is not None and _is_builtin(have) and not _is_builtin(cls) and _origin(have) != _origin(cls):
                raise SolverError(f"solver name {cls.name!r} of {_origin(cls)} clashes with the built-in solver "
                                  f"{_origin(have)}; give your solver another `name`")
            _REGISTRY[cls.name] = cls

    def __init__(self, prior: DiffusionPrior, task: str | None = None, dataset: str | None = None,
                 **overrides: Any) -> None:
        self.prior = prior
        self.task = task
        self.dataset = dataset
        resolved = resolve_config(type(self), task, dataset)
        unknown = sorted(set(overrides) - set(resolved))
        if unknown:
            raise SolverError(f"solver {self.name!r}: unknown hyper-parameter(s) {unknown}; "
                              f"valid keys: {sorted(resolved)}")
        self.sources = {k: v["source"] for k, v in resolved.items()}
        self.params = {k: v["value"] for k, v in resolved.items()}
        for k, v in overrides.items():
            self.params[k] = v
            self.sources[k] = "override"

    def __getattr__(self, key: str) -> Any:  # hyper-parameters read as attributes: self.num_steps
        params = self.__dict__.get("params", {})
        if key in params:
            return params[key]
        raise AttributeError(f"{type(self).__name__} has no attribute or hyper-parameter {key!r}")

    # ------------------------------------------------------------------ to implement
    def _solve(self, y: Tensor, A: Operator, rng: RNG) -> Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ public
    def budget(self) -> dict[str, int]:
        """Documented network budget per image for the current hyper-parameters:
        {"nfe_forward": ..., "nfe_backward": ...}; the tests compare it with the counted NFE."""
        raise NotImplementedError

    def supports(self, A: Operator) -> bool:
        """Whether this solver can run on operator A (override for structural needs such as an SVD)."""
        return self.tasks is None or A.name in self.tasks

    def solve(self, y: Tensor, A: Operator,
              generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Tensor:
        if not self.supports(A):
            raise UnsupportedTask(f"solver {self.name!r} does not support task {A.name!r}")
        self.prior.reset_counters()
        self._divergence = DivergenceFlag()
        try:
            x = self._solve(y, A, RNG(generator, y.shape[0]))
            self._divergence.raise_if_diverged()
        finally:
            self._divergence = None
        data_range = getattr(self.prior, "data_range", (-1.0, 1.0))  # None: unbounded data (vector priors)
        if data_range is None:
            return x.detach()
        return x.detach().clamp(*data_range).where(torch.isfinite(x), x.detach())

    def describe(self) -> dict[str, Any]:
        return {"solver": self.name, "task": self.task, "dataset": self.dataset,
                "params": dict(self.params), "sources": dict(self.sources),
                "external_models": self.external_models()}

    def external_models(self) -> dict[str, str]:
        """Models this solver uses besides the protocol's prior, role -> what it is (name, weights file, sha256),
        so that they enter the config and tables can name them; {} = the prior is the only model used."""
        return {}

    # ------------------------------------------------------------------ observers (diagnostics)
    @property
    def observed(self) -> bool:
        """Whether an observer is attached: solvers compute extra quantities for `observe` only then."""
        return bool(self.__dict__.get("_observers"))

    def add_observer(self, observer: Callable[..., None]) -> None:
        """Attach `observer(event, **quantities)`; it is called by `observe` during `solve`.
        Observers see tensors the solver computed anyway (detached); they must not modify them."""
        self.__dict__.setdefault("_observers", []).append(observer)

    def remove_observer(self, observer: Callable[..., None]) -> None:
        self.__dict__.get("_observers", []).remove(observer)

    def observe(self, event: str, **quantities: Any) -> None:
        """Report named quantities of the current step to the attached observers; free when none is attached.

        Conventions (bench/diagnostics.py reads these): event "likelihood_step" with `step` (outer index),
        `inner` (warm-up index, 0 when none), `sigma` or `k` (noise level), `x` (the point the gradient is
        taken at), `grad` (the likelihood gradient, descent is -grad) and `prior_direction` (the
        denoising direction at that point, e.g. D(x) - x or x0_hat - x, per image).
        """
        observers = self.__dict__.get("_observers")
        if not observers:
            return
        detached = {k: v.detach() if isinstance(v, Tensor) else v for k, v in quantities.items()}
        for observer in observers:
            observer(event, **detached)

    def check_finite(self, x: Tensor, where: str | Callable[[], str]) -> None:
        """Raise SolverDiverged("non-finite iterate at <where>") if x has a NaN/inf.

        Inside `solve` the test stays on the device (no sync): the flag is read back every
        `check_every` calls and when the solve ends, and the message names the first failing call.
        Outside a solve (a helper called directly) it reads back at once. `where` may be a callable,
        evaluated only when raising (for messages that would read device values).
        """
        flag = self.__dict__.get("_divergence")
        if flag is None:
            if not bool(torch.isfinite(x).all()):
                raise SolverDiverged(f"non-finite iterate at {_describe(where)}")
            return
        flag.record(x, where)
        if flag.pending >= self.check_every:
            flag.raise_if_diverged()


class DivergenceFlag:
    """On-device record of the first non-finite `Solver.check_finite` call since the last read-back.

    `first` is a 0-dim int64 tensor on the iterate's device: 0 when every recorded iterate was finite,
    else the 1-based position of the first non-finite one among `wheres`. `raise_if_diverged` is the
    only host read (one `int(first)`).
    """

    def __init__(self) -> None:
        self.wheres: list[str | Callable[[], str]] = []
        self.first: Tensor | None = None

    @property
    def pending(self) -> int:
        return len(self.wheres)

    def record(self, x: Tensor, where: str | Callable[[], str]) -> None:
        self.wheres.append(where)
        hit = (~torch.isfinite(x).all()).to(torch.int64) * len(self.wheres)
        self.first = hit if self.first is None else torch.where(self.first > 0, self.first, hit)

    def raise_if_diverged(self) -> None:
        first, wheres = self.first, self.wheres
        self.first, self.wheres = None, []
        if first is not None:
            position = int(first)
            if position:
                raise SolverDiverged(f"non-finite iterate at {_describe(wheres[position - 1])}")


def _describe(where: str | Callable[[], str]) -> str:
    return where() if callable(where) else where


def initial_estimate(y: Tensor, A: Operator, image_shape: tuple[int, ...]) -> Tensor:
    """A measurement-only starting image: A^+ y where the operator has a pseudo-inverse, else y (when it
    has the image shape), else A^T y, else zeros (RED-Diff mu_0, DiffPIR's base of x_T)."""
    try:
        return A.pinv(y)
    except (OperatorError, NotImplementedError, AttributeError):
        pass
    if tuple(y.shape[1:]) == tuple(image_shape):
        return y.clone()
    if A.is_linear:
        return A.adjoint(y)
    return y.new_zeros((y.shape[0], *image_shape))


# ---------------------------------------------------------------------- configs
def _entries(block: dict[str, Any] | None, where: str) -> dict[str, dict[str, Any]]:
    out = {}
    for key, entry in (block or {}).items():
        if not isinstance(entry, dict) or "value" not in entry or "source" not in entry:
            raise SolverError(f"{where}: hyper-parameter {key!r} must be {{value: ..., source: ...}}")
        out[key] = entry
    return out


def load_config(name: str) -> dict[str, Any]:
    """The parsed `<CONFIG_DIR>/<name>.yaml` ({} when absent); SolverError naming file and line if malformed."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        return {}
    shown = _shown_path(path)
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        if getattr(err, "context", None):
            problem = f"{problem} ({' '.join(str(err.context).split())})"
        raise SolverError(f"{shown}: not valid YAML{where}: {problem}; fix the file or `git checkout {shown}` "
                          f"it") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SolverError(f"{shown}: cannot be read ({err}); fix the file or `git checkout {shown}` it") from None
    if not isinstance(cfg, dict):
        raise SolverError(f"{shown}: expected a mapping with 'params' (and optional 'tasks' / 'datasets'), got a "
                          f"{type(cfg).__name__}; fix the file or `git checkout {shown}` it")
    return cfg


def _shown_path(path: Path) -> str:
    """A config path as the user would type it: relative to the repository when inside it."""
    try:
        return path.resolve().relative_to(Path(__file__).resolve().parents[1]).as_posix()
    except ValueError:
        return str(path)


def resolve_config(cls: type[Solver], task: str | None, dataset: str | None) -> dict[str, dict[str, Any]]:
    """Merge the config layers for (task, dataset); each value keeps its source."""
    cfg = load_config(cls.name) if cls.name else {}
    where = f"solvers/configs/{cls.name}.yaml"
    merged = _entries(copy.deepcopy(cls.defaults), f"{cls.__name__}.defaults")
    merged.update(_entries(cfg.get("params"), where))
    layers = []
    if task is not None:
        layers.append((cfg.get("tasks", {}).get(task, {}) or {}).get("params"))
    if dataset is not None:
        ds = cfg.get("datasets", {}).get(dataset, {}) or {}
        layers.append(ds.get("params"))
        if task is not None:
            layers.append((ds.get("tasks", {}).get(task, {}) or {}).get("params"))
    for layer in layers:
        for key, entry in _entries(layer, where).items():
            if key not in merged:
                raise SolverError(f"{where}: {key!r} set for a task/dataset but has no default in 'params'")
            merged[key] = entry
    return merged


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_builtin(cls: type) -> bool:
    return cls.__module__.startswith("solvers.")


def solver_class(name: str) -> type[Solver]:
    """The registered class of a solver name; SolverError naming the available ones otherwise."""
    _load_builtin()
    if name not in _REGISTRY:
        raise SolverError(f"unknown solver {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def get(name: str, prior: DiffusionPrior, task: str | None = None, dataset: str | None = None,
        **overrides: Any) -> Solver:
    return solver_class(name)(prior, task=task, dataset=dataset, **overrides)


def available() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    import solvers  # noqa: F401  (importing the package imports every built-in solver module)
