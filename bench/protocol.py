"""Benchmark protocols: one YAML file says everything that decides a number (nothing implicit).

A protocol lives in bench/protocols/<name>.yaml (or any path). Schema (unknown keys are an error):

    name: table1                     # results go to results/<name>/
    description: "..."               # free text
    seed: 0                          # the protocol seed (bench/seeding.py derives every stream)
    batch_size: 8                    # images per batch; never changes a result (per-image streams)
    sigma_y: 0.05                    # noise std in [-1,1] pixel units (a task may override)
    metrics: {lpips: vgg, ssim: rgb} # bench.metrics.Metrics(**metrics) conventions
    grid_images: 4                   # images per (dataset, task) kept for the qualitative grids
    smoke: false                     # true: every solver runs with its class `smoke` overrides
    imports: []                      # python modules to import first (own solvers / priors)
    reference: null                  # CSV of published numbers to compare with (tables)
    datasets:                        # in table order
      ffhq:
        label: FFHQ
        prior: ffhq256               # priors.registry name | "gaussian" | "module:function"
        image_size: 256              # resize short side + centre crop (antialiased)
        manifest: datasets/ffhq256_val1k.json
        root: null                   # image folder; default $RESTOREBENCH_DATA/<name> or ./data/<name>
        count: 1000                  # first `count` images of the manifest (null: all)
    tasks:                           # in table order; task names of operators/
      inpaint_random:
        label: "Inpaint (random 80 %)"
        params: {p: 0.8}             # operator parameters (operators.get(task, **params))
        shared_params: false         # true: one mask/kernel for the whole run (SPGD/DAPS code)
        sigma_y: 0.05                # optional override
    solvers: {dps: {label: DPS, overrides: {}}, ...}   # or the string "all" (every registered solver)

The pseudo-solvers `oracle_mean` and `oracle_sample` (exact posterior mean / sample, only for
priors that provide `posterior_mean` / `posterior_sample`) may be listed like solvers.
"""
from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.errors import BenchError

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTOCOL_DIR = Path(__file__).resolve().parent / "protocols"
ORACLES = ("oracle_mean", "oracle_sample")

_TOP = {"name", "description", "seed", "batch_size", "sigma_y", "metrics", "grid_images", "smoke",
        "imports", "reference", "datasets", "tasks", "solvers"}
_REQUIRED_TOP = {"name", "seed", "batch_size", "sigma_y", "metrics", "datasets", "tasks", "solvers"}
_DATASET = {"label", "prior", "image_size", "manifest", "root", "count"}
_REQUIRED_DATASET = {"prior", "image_size", "manifest"}
_TASK = {"label", "params", "shared_params", "sigma_y"}
_SOLVER = {"label", "overrides"}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    label: str
    prior: str
    image_size: int
    manifest: str
    root: str | None = None
    count: int | None = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    label: str
    params: dict[str, Any]
    shared_params: bool
    sigma_y: float


@dataclass(frozen=True)
class SolverSpec:
    name: str
    label: str
    overrides: dict[str, Any]

    @property
    def is_oracle(self) -> bool:
        return self.name in ORACLES


@dataclass
class Protocol:
    name: str
    description: str
    seed: int
    batch_size: int
    sigma_y: float
    metrics: dict[str, Any]
    grid_images: int
    smoke: bool
    imports: list[str]
    reference: str | None
    datasets: list[DatasetSpec]
    tasks: list[TaskSpec]
    solvers: list[SolverSpec]
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def dataset(self, name: str) -> DatasetSpec:
        return next(d for d in self.datasets if d.name == name)

    def restrict(self, datasets: list[str] | None = None, tasks: list[str] | None = None,
                 solvers: list[str] | None = None) -> "Protocol":
        """The same protocol over a subset (CLI --datasets/--tasks/--solvers); unknown names are errors."""
        out = copy.copy(self)
        for attr, wanted in (("datasets", datasets), ("tasks", tasks), ("solvers", solvers)):
            if not wanted:
                continue
            have = {s.name: s for s in getattr(self, attr)}
            unknown = [w for w in wanted if w not in have]
            if unknown:
                raise BenchError(f"protocol {self.name!r} has no {attr[:-1]} {', '.join(map(repr, unknown))}; "
                                 f"it has: {', '.join(have)}")
            setattr(out, attr, [s for s in getattr(self, attr) if s.name in wanted])
        return out


def available() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


def resolve_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = PROTOCOL_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    raise BenchError(f"unknown protocol {name_or_path!r}: no file {candidate}; "
                     f"available protocols: {', '.join(available())} (or give a path to a .yaml file)")


def load(name_or_path: str) -> Protocol:
    path = resolve_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise BenchError(f"protocol {path}: not valid YAML: {err}") from None
    return parse(raw, source=str(path))


def _check_keys(where: str, block: Any, allowed: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(block, dict):
        raise BenchError(f"{where}: expected a mapping, got {type(block).__name__}")
    unknown = sorted(set(block) - allowed)
    if unknown:
        raise BenchError(f"{where}: unknown key(s) {unknown}; allowed keys: {sorted(allowed)}")
    missing = sorted(required - set(block))
    if missing:
        raise BenchError(f"{where}: missing key(s) {missing}")
    return block


def _number(where: str, value: Any, kind: type, minimum: float | None = None) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise BenchError(f"{where}: expected {kind.__name__}, got {value!r}")
    if minimum is not None and value < minimum:
        raise BenchError(f"{where}: must be >= {minimum}, got {value!r}")
    return kind(value)


def parse(raw: Any, source: str = "<protocol>") -> Protocol:
    top = _check_keys(f"protocol {source}", raw, _TOP, _REQUIRED_TOP)
    where = f"protocol {top.get('name', source)}"
    sigma_y = _number(f"{where}: sigma_y", top["sigma_y"], float, 0.0)
    imports = list(top.get("imports") or [])
    for module in imports:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise BenchError(f"{where}: cannot import module {module!r} listed under 'imports': {err}") from None

    datasets = []
    for name, entry in _mapping(f"{where}: datasets", top["datasets"]).items():
        d = _check_keys(f"{where}: datasets.{name}", entry or {}, _DATASET, _REQUIRED_DATASET)
        count = d.get("count")
        datasets.append(DatasetSpec(
            name=str(name), label=str(d.get("label", name)), prior=str(d["prior"]),
            image_size=_number(f"{where}: datasets.{name}.image_size", d["image_size"], int, 1),
            manifest=str(d["manifest"]), root=d.get("root"),
            count=None if count is None else _number(f"{where}: datasets.{name}.count", count, int, 1)))

    tasks = []
    for name, entry in _mapping(f"{where}: tasks", top["tasks"]).items():
        t = _check_keys(f"{where}: tasks.{name}", entry or {}, _TASK)
        params = t.get("params") or {}
        if not isinstance(params, dict):
            raise BenchError(f"{where}: tasks.{name}.params must be a mapping")
        shared = t.get("shared_params", False)
        if not isinstance(shared, bool):
            raise BenchError(f"{where}: tasks.{name}.shared_params must be true or false")
        tasks.append(TaskSpec(name=str(name), label=str(t.get("label", name)), params=dict(params),
                              shared_params=shared,
                              sigma_y=_number(f"{where}: tasks.{name}.sigma_y", t.get("sigma_y", sigma_y), float, 0.0)))

    solvers_raw = top["solvers"]
    if solvers_raw == "all":
        import solvers as solver_pkg
        solvers_raw = {name: {} for name in solver_pkg.available()}
    solvers = []
    for name, entry in _mapping(f"{where}: solvers", solvers_raw).items():
        s = _check_keys(f"{where}: solvers.{name}", entry or {}, _SOLVER)
        overrides = s.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise BenchError(f"{where}: solvers.{name}.overrides must be a mapping")
        solvers.append(SolverSpec(name=str(name), label=str(s.get("label", name)), overrides=dict(overrides)))

    metrics = top["metrics"]
    if not isinstance(metrics, dict):
        raise BenchError(f"{where}: metrics must be a mapping such as {{lpips: vgg, ssim: rgb}}")
    smoke = top.get("smoke", False)
    if not isinstance(smoke, bool):
        raise BenchError(f"{where}: smoke must be true or false")
    return Protocol(
        name=str(top["name"]), description=str(top.get("description", "")),
        seed=_number(f"{where}: seed", top["seed"], int, 0),
        batch_size=_number(f"{where}: batch_size", top["batch_size"], int, 1),
        sigma_y=sigma_y, metrics=dict(metrics),
        grid_images=_number(f"{where}: grid_images", top.get("grid_images", 4), int, 0),
        smoke=smoke, imports=imports, reference=top.get("reference"),
        datasets=datasets, tasks=tasks, solvers=solvers, source=source, raw=raw)


def _mapping(where: str, value: Any) -> dict:
    if not isinstance(value, dict) or not value:
        raise BenchError(f"{where}: expected a non-empty mapping of name -> settings")
    return value


def repo_path(path: str | Path) -> Path:
    """A path from a protocol: absolute, or relative to the repository root."""
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p
