"""Search spaces of `bench sweep`, read from the `search:` block of solvers/configs/<name>.yaml.

    search:
      zeta: {kind: log_uniform, factor: [0.1, 10.0], source: "chosen by us: ..."}
      eta:  {kind: uniform, low: 0.0, high: 1.0, source: "..."}
      steps: {kind: int, low: 10, high: 100, source: "..."}
      cosine: {kind: choice, choices: [global, channel], source: "..."}

`kind`: log_uniform | uniform | int | choice. A range is absolute (`low`, `high`) or relative to the
published value of the cell being tuned (`factor: [a, b]` -> [a * published, b * published], so one block
serves tasks whose published values differ by decades). Every dimension needs a `source` (a paper, a
repo, or "chosen by us: why"). A key must be a hyper-parameter of the solver (`params:`). A solver without a
YAML file (a user's own) may define the same mapping as its class attribute `search`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.errors import BenchError

KINDS = ("log_uniform", "uniform", "int", "choice")
_KEYS = {"kind", "low", "high", "factor", "choices", "source"}


@dataclass(frozen=True)
class Dimension:
    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    factor: tuple[float, float] | None = None
    choices: tuple[Any, ...] = ()
    source: str = ""

    def bounds(self, published: Any) -> tuple[float, float]:
        """(low, high) of this cell; a relative range is scaled by the published value."""
        if self.factor is None:
            return float(self.low), float(self.high)  # type: ignore[arg-type]
        if not isinstance(published, (int, float)) or isinstance(published, bool) or published <= 0:
            raise BenchError(f"search {self.key!r}: a relative range (factor) needs a positive published value, "
                             f"got {published!r}; give low/high instead")
        return self.factor[0] * published, self.factor[1] * published

    def suggest(self, trial: Any, published: Any) -> Any:
        """The value an Optuna trial proposes (floats rounded to 4 significant digits, so configurations and
        the tuned layer stay readable; the rounded value is the one evaluated)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        low, high = self.bounds(published)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(low), int(high))
        value = trial.suggest_float(self.key, low, high, log=self.kind == "log_uniform")
        return float(f"{value:.4g}")

    def contains(self, value: Any, published: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        low, high = self.bounds(published)
        return isinstance(value, (int, float)) and low <= value <= high


def parse(solver: str, block: Any, known: dict[str, Any]) -> dict[str, Dimension]:
    """The `search:` block of one solver's YAML -> {key: Dimension}; BenchError naming the problem."""
    where = f"solvers/configs/{solver}.yaml: search"
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise BenchError(f"{where}: expected a mapping of hyper-parameter -> {{kind, ..., source}}")
    out = {}
    for key, spec in block.items():
        w = f"{where}.{key}"
        if key not in known:
            raise BenchError(f"{w}: {solver} has no hyper-parameter {key!r}; valid keys: {', '.join(sorted(known))}")
        if not isinstance(spec, dict):
            raise BenchError(f"{w}: expected {{kind: ..., source: ...}}")
        unknown = sorted(set(spec) - _KEYS)
        if unknown:
            raise BenchError(f"{w}: unknown key(s) {unknown}; allowed: {sorted(_KEYS)}")
        kind = spec.get("kind")
        if kind not in KINDS:
            raise BenchError(f"{w}: kind {kind!r} is not one of {', '.join(KINDS)}")
        if not str(spec.get("source") or "").strip():
            raise BenchError(f"{w}: needs a source (a paper, a repo config, or \"chosen by us: why\")")
        if kind == "choice":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise BenchError(f"{w}: kind choice needs a non-empty list `choices`")
            out[key] = Dimension(key, kind, choices=tuple(choices), source=str(spec["source"]))
            continue
        factor = spec.get("factor")
        if factor is not None:
            if not (isinstance(factor, list) and len(factor) == 2 and all(isinstance(f, (int, float)) for f in factor)
                    and 0 < factor[0] <= 1 <= factor[1]):
                raise BenchError(f"{w}: factor must be [a, b] with 0 < a <= 1 <= b (the published value inside)")
            out[key] = Dimension(key, kind, factor=(float(factor[0]), float(factor[1])), source=str(spec["source"]))
            continue
        low, high = spec.get("low"), spec.get("high")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
            raise BenchError(f"{w}: needs numbers low < high (or factor: [a, b])")
        if kind == "log_uniform" and low <= 0:
            raise BenchError(f"{w}: log_uniform needs low > 0")
        out[key] = Dimension(key, kind, low=float(low), high=float(high), source=str(spec["source"]))
    return out


def search_space(solver: str) -> dict[str, Dimension]:
    """The search space of a registered solver ({} when its YAML has no `search:` block)."""
    from solvers.base import SolverError, load_config, resolve_config, solver_class
    try:
        cls = solver_class(solver)
        cfg = load_config(cls.name)
        known = resolve_config(cls, None, None)
    except SolverError as err:
        raise BenchError(str(err)) from None
    block = cfg.get("search") if cfg.get("search") is not None else getattr(cls, "search", None)
    return parse(solver, block, known)
