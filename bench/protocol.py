"""Benchmark protocols: one YAML file says everything that decides a number (nothing implicit).

A protocol lives in bench/protocols/<name>.yaml (or any path). Schema (unknown keys are an error):

    name: table1                     # results go to results/<name>/
    description: "..."               # free text
    seed: 0                          # the protocol seed (bench/seeding.py derives every stream)
    batch_size: 8                    # images per batch; never changes a result (per-image streams);
                                     # a dataset may set its own (imagenet's network is ~3.5x ffhq's)
    sigma_y: 0.05                    # noise std in [-1,1] pixel units (a task may override)
    metrics: {lpips: vgg, ssim: rgb} # bench.metrics.Metrics(**metrics) conventions
    grid_images: 4                   # images per (dataset, task) kept for the qualitative grids
    set_metrics: []                  # optional [fid, kid] over each cell's image set (bench/fid.py): the runner
                                     # then saves every output PNG under outputs/ (Inception weights: make checkpoints)
    smoke: false                     # true: every solver runs with its class `smoke` overrides
    imports: []                      # python modules to import first (own solvers / priors)
    rng_device: run                  # run: random streams on the run's device (fast); cpu: drawn on the
                                     # CPU and copied (identical numbers on every device, slower on GPU)
    speed:                           # speed switches; all enter the config hash and the table footer
      precision: fp32                # fp32 | bf16 | fp16 (autocast of the ADM UNet)
      channels_last: false           # NHWC convolutions
      compile: false                 # torch.compile the UNet
      checkpointing: false           # activation checkpointing (less memory, ~1 extra forward per backward)
      tf32: false                    # TF32 matmul / convolutions on Ampere+ GPUs
      cudnn_benchmark: false         # cudnn autotuning
      deterministic: false           # deterministic CUDA kernels (results independent of the batch size)
    reference: null                  # CSV of published numbers to compare with (tables)
    tuning: published                # published: solvers/configs/<solver>.yaml values; tuned: + the layer
                                     # solvers/configs/tuned/<name>.yaml written by `bench sweep` (enters the
                                     # config hash; the table footer names the rows that used it)
    datasets:                        # in table order
      ffhq:
        label: FFHQ
        prior: ffhq256               # priors.registry name | "gaussian" | "module:function"
        image_size: 256              # resize short side + centre crop (antialiased)
        manifest: datasets/ffhq256_val1k.json
        root: null                   # image folder; default $RESTOREBENCH_DATA/<name> or ./data/<name>
        count: 1000                  # first `count` images of the manifest (null: all)
        batch_size: 8                # optional: this dataset's batch size (default: the protocol's)
        unet: null                   # for a checkpoint path: guided-diffusion UNet flags (a mapping) or the
                                     # name of a registered checkpoint whose flags to reuse (e.g. ffhq256)
    tasks:                           # in table order; task names of operators/
      inpaint_random:
        label: "Inpaint (random 80 %)"
        params: {p: 0.8}             # operator parameters (operators.get(task, **params)); some must be
                                     # stated (operators.base.must_state: phase_retrieval's variant)
        shared_params: false         # true: one mask/kernel for the whole run (SPGD/DAPS code)
        sigma_y: 0.05                # optional override
    solvers: {dps: {label: DPS, overrides: {}}, ...}   # or the string "all" (every registered solver)
    # an entry's name is its table row; `solver:` names the registered solver when the row is a variant:
    #   pnp_admm_dncnn: {solver: pnp_admm, label: "PnP-ADMM (DnCNN)", overrides: {denoiser: dncnn}}

The pseudo-solvers `oracle_mean` and `oracle_sample` (exact posterior mean / sample, only for
priors that provide `posterior_mean` / `posterior_sample`) may be listed like solvers.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.errors import BenchError

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTOCOL_DIR = Path(__file__).resolve().parent / "protocols"
ORACLES = ("oracle_mean", "oracle_sample")

_TOP = {"name", "description", "seed", "batch_size", "sigma_y", "metrics", "grid_images", "smoke",
        "imports", "reference", "datasets", "tasks", "solvers", "rng_device", "speed", "set_metrics",
        "tuning"}
_REQUIRED_TOP = {"name", "seed", "batch_size", "sigma_y", "metrics", "datasets", "tasks", "solvers"}
_DATASET = {"label", "prior", "image_size", "manifest", "root", "count", "batch_size", "unet"}
_REQUIRED_DATASET = {"prior", "image_size", "manifest"}
_TASK = {"label", "params", "shared_params", "sigma_y"}
_SOLVER = {"label", "overrides", "solver"}
RNG_DEVICES = ("run", "cpu")
TUNINGS = ("published", "tuned")  # hyper-parameters: the solvers' YAML values, or + the tuned layer
PRECISIONS = ("fp32", "bf16", "fp16")
#: speed switches and their defaults (off = the reference fp32 numbers)
SPEED_DEFAULTS: dict[str, Any] = {"precision": "fp32", "channels_last": False, "compile": False,
                                  "checkpointing": False, "tf32": False, "cudnn_benchmark": False,
                                  "deterministic": False}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    label: str
    prior: str
    image_size: int
    manifest: str
    root: str | None = None
    count: int | None = None
    batch_size: int | None = None
    unet: Any = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    label: str
    params: dict[str, Any]
    shared_params: bool
    sigma_y: float


@dataclass(frozen=True)
class SolverSpec:
    name: str                    # the entry (table row) name
    label: str
    overrides: dict[str, Any]
    solver: str = ""             # the registered solver it runs (default: the entry name)

    @property
    def solver_name(self) -> str:
        return self.solver or self.name

    @property
    def is_oracle(self) -> bool:
        return self.solver_name in ORACLES


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
    rng_device: str = "run"
    speed: dict[str, Any] = field(default_factory=lambda: dict(SPEED_DEFAULTS))
    set_metrics: list[str] = field(default_factory=list)  # "fid", "kid": over each cell's image set
    tuning: str = "published"    # published | tuned (solvers/configs/tuned/<name>.yaml, bench/tuning.py)

    def dataset(self, name: str) -> DatasetSpec:
        return next(d for d in self.datasets if d.name == name)

    def batch_size_for(self, ds: DatasetSpec) -> int:
        return ds.batch_size or self.batch_size

    def restrict(self, datasets: list[str] | None = None, tasks: list[str] | None = None,
                 solvers: list[str] | None = None) -> "Protocol":
        """The same protocol over a subset (CLI --datasets/--tasks/--solvers); unknown names are errors."""
        out = copy.copy(self)
        for attr, wanted in (("datasets", datasets), ("tasks", tasks), ("solvers", solvers)):
            if not wanted:
                continue
            have = {s.name: s for s in getattr(self, attr)}
            if attr == "solvers":  # any registered solver runs in any protocol (`--import mine --solvers mine`)
                import solvers as solver_pkg
                registered = set(solver_pkg.available()) | set(ORACLES)
                out.solvers = [have.get(w) or SolverSpec(name=w, label=w, overrides={})
                               for w in wanted if w in have or w in registered]
                unknown = [w for w in wanted if w not in have and w not in registered]
                if unknown:
                    raise BenchError(f"unknown solver {', '.join(map(repr, unknown))}: not in protocol {self.name!r} "
                                     f"and not registered; registered solvers: {', '.join(sorted(registered))} "
                                     f"(a solver of your own: --import yourmodule)")
                continue
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
        import_user_module(module, f"{where}: 'imports'")

    datasets = []
    for name, entry in _mapping(f"{where}: datasets", top["datasets"]).items():
        d = _check_keys(f"{where}: datasets.{name}", entry or {}, _DATASET, _REQUIRED_DATASET)
        count = d.get("count")
        datasets.append(DatasetSpec(
            name=str(name), label=str(d.get("label", name)), prior=str(d["prior"]),
            image_size=_number(f"{where}: datasets.{name}.image_size", d["image_size"], int, 1),
            manifest=str(d["manifest"]), root=d.get("root"),
            count=None if count is None else _number(f"{where}: datasets.{name}.count", count, int, 1),
            batch_size=None if d.get("batch_size") is None else _number(
                f"{where}: datasets.{name}.batch_size", d["batch_size"], int, 1),
            unet=_unet(f"{where}: datasets.{name}.unet", d.get("unet"))))

    tasks = []
    for name, entry in _mapping(f"{where}: tasks", top["tasks"]).items():
        t = _check_keys(f"{where}: tasks.{name}", entry or {}, _TASK)
        params = t.get("params") or {}
        if not isinstance(params, dict):
            raise BenchError(f"{where}: tasks.{name}.params must be a mapping")
        shared = t.get("shared_params", False)
        if not isinstance(shared, bool):
            raise BenchError(f"{where}: tasks.{name}.shared_params must be true or false")
        _check_stated(f"{where}: tasks.{name}.params", str(name), params)
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
        target = s.get("solver")
        if target is not None and not isinstance(target, str):
            raise BenchError(f"{where}: solvers.{name}.solver must be the name of a registered solver")
        solvers.append(SolverSpec(name=str(name), label=str(s.get("label", name)), overrides=dict(overrides),
                                  solver=str(target or "")))

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
        datasets=datasets, tasks=tasks, solvers=solvers, source=source, raw=raw,
        rng_device=_choice(f"{where}: rng_device", top.get("rng_device", "run"), RNG_DEVICES),
        speed=parse_speed(f"{where}: speed", top.get("speed")),
        set_metrics=_set_metrics(where, top.get("set_metrics")),
        tuning=_choice(f"{where}: tuning", top.get("tuning", "published"), TUNINGS))


SET_METRICS = ("fid", "kid")


def _set_metrics(where: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or any(v not in SET_METRICS for v in value):
        raise BenchError(f"{where}: set_metrics must be a list of {', '.join(SET_METRICS)} (e.g. [fid, kid]); "
                         f"got {value!r}")
    return [m for m in SET_METRICS if m in value]


def _check_stated(where: str, task: str, params: dict[str, Any]) -> None:
    """Operator parameters whose default is one solver family's convention must be written in the protocol
    (operators.base.must_state; e.g. phase retrieval's `variant`: dps for DPS/DPPS/DCDP, spgd for SPGD/DAPS)."""
    from operators.base import must_state
    for key, choices in must_state(task).items():
        if key not in params:
            raise BenchError(f"{where} must state {key}: {choices}; e.g. params: {{{key}: ...}}")


def _choice(where: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise BenchError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _unet(where: str, value: Any) -> Any:
    if value is None or isinstance(value, (str, dict)):
        return value
    raise BenchError(f"{where}: expected UNet flags (a mapping) or a registered checkpoint name, got {value!r}")


def parse_speed(where: str, block: Any) -> dict[str, Any]:
    """The speed switches with their defaults filled in; unknown keys and wrong types are errors."""
    block = {} if block is None else _check_keys(where, block, set(SPEED_DEFAULTS))
    out = dict(SPEED_DEFAULTS)
    for key, value in block.items():
        if key == "precision":
            out[key] = _choice(f"{where}.precision", value, PRECISIONS)
        elif not isinstance(value, bool):
            raise BenchError(f"{where}.{key}: expected true or false, got {value!r}")
        else:
            out[key] = value
    return out


def import_user_module(module: str, where: str = "--import") -> Any:
    """Import a user's module (a dotted name on sys.path, or a path to a .py file) so its solvers or priors
    register; any failure is one BenchError line naming the module."""
    import sys
    path = Path(module)
    try:
        if path.suffix == ".py":
            if not path.is_file():
                raise BenchError(f"{where}: no file {module!r}")
            name = path.stem
            spec = importlib.util.spec_from_file_location(name, path.resolve())
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)  # type: ignore[union-attr]
            return mod
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        return importlib.import_module(module)
    except BenchError:
        raise
    except Exception as err:  # noqa: BLE001 - a user's module may fail in any way; one line names it
        raise BenchError(f"{where}: cannot import module {module!r}: {type(err).__name__}: {err}") from None


def apply_sets(p: "Protocol", sets: list[str] | None) -> "Protocol":
    """`--set solver.key=value` (value parsed as YAML: 2.0, true, [1, 2], a string) onto every entry of that
    solver (or entry name), validated against the solver's hyper-parameters and their types."""
    if not sets:
        return p
    from solvers.base import resolve_config, solver_class
    out = copy.copy(p)
    entries = list(p.solvers)
    for item in sets:
        target, sep, value_text = item.partition("=")
        solver, dot, key = target.strip().partition(".")
        if not sep or not dot or not solver or not key:
            raise BenchError(f"--set {item!r}: expected SOLVER.KEY=VALUE, e.g. --set spgd.lr=2.0")
        try:
            value = yaml.safe_load(value_text)
        except yaml.YAMLError:
            value = value_text
        hit = [i for i, e in enumerate(entries) if solver in (e.name, e.solver_name)]
        if not hit:
            raise BenchError(f"--set {item!r}: no solver {solver!r} in this run; it has: "
                             f"{', '.join(e.name for e in entries)}")
        for i in hit:
            e = entries[i]
            if e.is_oracle:
                raise BenchError(f"--set {item!r}: {e.name} has no hyper-parameters")
            cls = solver_class(e.solver_name)
            known = resolve_config(cls, None, None)
            if key not in known:
                raise BenchError(f"--set {item!r}: {e.solver_name} has no hyper-parameter {key!r}; "
                                 f"valid keys: {', '.join(sorted(known))}")
            _check_type(item, known[key]["value"], value)
            entries[i] = SolverSpec(e.name, e.label, {**e.overrides, key: value}, e.solver)
    out.solvers = entries
    return out


def _check_type(item: str, default: Any, value: Any) -> None:
    if default is None or value is None:
        return
    numeric = (int, float)
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, numeric):
        ok = isinstance(value, numeric)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise BenchError(f"--set {item!r}: expected a value like {default!r} ({type(default).__name__}), "
                         f"got {value!r} ({type(value).__name__})")


def _mapping(where: str, value: Any) -> dict:
    if not isinstance(value, dict) or not value:
        raise BenchError(f"{where}: expected a non-empty mapping of name -> settings")
    return value


def repo_path(path: str | Path) -> Path:
    """A path from a protocol: absolute, or relative to the repository root."""
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p
