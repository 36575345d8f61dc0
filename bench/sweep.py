"""`python -m bench sweep`: hyper-parameter tuning on validation splits, with the harness as the objective.

For each (dataset, task, solver entry) a study proposes values for the keys of the solver's `search:` block
(bench/search_space.py) with Optuna's TPE sampler (seeded); each trial is an ordinary `Runner.run()` of the
protocol on the dataset's *validation* split (bench/splits.py; a test manifest is refused) with the trial's
values as the entry's overrides, into results/<protocol>-sweep/. So a trial's records are cached in the
store: rerunning the sweep after a crash replays the finished trials from the store (same values, so the
seeded sampler proposes the same next values) and computes only what is missing.

Equal budget: every solver gets the same number of trials x images; trial 0 is always the published values
(so the tuned value is never worse than the published one on the validation split). The objective is
named on the command line: psnr (maximise the mean), lpips (minimise), or psnr-lpips:W (maximise
mean PSNR - W x mean LPIPS). A failed image (diverged / error) scores PSNR 0 dB and LPIPS 1.

Outputs: results/<protocol>-sweep/studies/<dataset>/<task>/<entry>.json (every trial), the tuned layer
solvers/configs/tuned/<protocol>.yaml (bench/tuning.py), and with --published-vs-tuned the test-split
comparison results/<protocol>-sweep/published_vs_tuned.md. `--nfe KEY=v1,v2,...` instead runs the solver at
several values of a cost key (step counts) on the protocol's own split, into results/<protocol>/, so the
quality-vs-cost figures of `bench table` (bench/figures.py) show the curve.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench.errors import BenchError
from bench.protocol import DatasetSpec, Protocol, SolverSpec, TaskSpec
from bench.runner import Cell, Runner
from bench.search_space import Dimension, search_space

FAILED_PSNR = 0.0
FAILED_LPIPS = 1.0
Z95 = 1.959964


# ------------------------------------------------------------------------------------------ objective
@dataclass(frozen=True)
class Objective:
    """psnr | lpips | psnr-lpips:W, as named on the command line."""
    name: str
    weight: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "Objective":
        t = text.strip().lower()
        if t in ("psnr", "lpips"):
            return cls(t)
        if t.startswith("psnr-lpips:"):
            try:
                w = float(t.split(":", 1)[1])
            except ValueError:
                w = -1.0
            if w > 0 and math.isfinite(w):
                return cls("psnr-lpips", w)
        raise BenchError(f"--objective {text!r}: use psnr, lpips or psnr-lpips:W (W > 0, e.g. psnr-lpips:20 = "
                         f"PSNR - 20 x LPIPS)")

    @property
    def direction(self) -> str:
        return "minimize" if self.name == "lpips" else "maximize"

    @property
    def label(self) -> str:
        return f"psnr-lpips:{self.weight:g}" if self.name == "psnr-lpips" else self.name

    @property
    def unit(self) -> str:
        return {"psnr": "dB", "lpips": "", "psnr-lpips": ""}[self.name]

    def per_image(self, record: dict) -> float:
        ok = record.get("status") == "ok"
        psnr = record.get("psnr") if ok else FAILED_PSNR
        lpips = record.get("lpips") if ok else FAILED_LPIPS
        if self.name != "psnr" and lpips is None:
            raise BenchError(f"objective {self.label} needs LPIPS, but the records have none; set metrics.lpips in "
                             f"the protocol")
        if self.name == "psnr":
            return float(psnr)
        if self.name == "lpips":
            return float(lpips)
        return float(psnr) - self.weight * float(lpips)

    def better(self, a: float, b: float) -> bool:
        return a < b if self.direction == "minimize" else a > b


def mean_ci(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95 % normal interval of the mean over images; 0 for one image)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, Z95 * math.sqrt(var / n)


# ------------------------------------------------------------------------------------------ runner
class SweepRunner(Runner):
    """A Runner that keeps its priors and metrics between runs (one per trial), remembers the cells of its
    last run (their config hashes), and does not project network time (bench plan does that)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._priors: dict[str, Any] = {}
        self._metrics: Any = None
        self.last_cells: list[Cell] = []

    def _load_priors(self, problems: list[str]) -> dict[str, Any]:
        missing = [ds for ds in self.p.datasets if (ds.name, ds.prior) not in self._priors]
        if missing:
            saved, self.p = self.p, dataclasses.replace(self.p, datasets=missing)
            try:
                for name, prior in super()._load_priors(problems).items():
                    self._priors[(name, self.p.dataset(name).prior)] = prior
            finally:
                self.p = saved
        return {ds.name: self._priors[(ds.name, ds.prior)] for ds in self.p.datasets
                if (ds.name, ds.prior) in self._priors}

    def metric_object(self) -> Any:
        if self._metrics is None:
            self._metrics = super().metric_object()
        return self._metrics

    def cells(self, ds: DatasetSpec, task: TaskSpec, prior: Any, card: dict) -> list[Cell]:
        out = super().cells(ds, task, prior, card)
        self.last_cells.extend(out)
        return out

    def projection(self, plan: list, priors: dict) -> str:
        return "projected time: see `python -m bench plan`"

    def run_protocol(self, protocol: Protocol) -> list[Cell]:
        """Run `protocol` (resumable, cached by the store); returns its cells."""
        self.p = protocol
        self.last_cells = []
        self.run()
        return list(self.last_cells)

    def records_of(self, cell: Cell) -> list[dict]:
        """The current records of a cell (its config hash, made by its code fingerprint)."""
        from bench.store import load_records
        return [r for r in load_records(self.dir, all_versions=True)
                if r["dataset"] == cell.dataset.name and r["task"] == cell.task.name
                and r["solver"] == cell.solver.name and r["config_hash"] == cell.config_hash
                and r.get("fingerprint") == cell.fingerprint.digest]


# ------------------------------------------------------------------------------------------ studies
@dataclass
class TrialResult:
    number: int
    params: dict[str, Any]
    value: float
    ci: float
    psnr: float | None
    lpips: float | None
    n_images: int
    n_failed: int
    config_hash: str


@dataclass
class Study:
    protocol: str
    dataset: str
    task: str
    entry: str
    solver: str
    objective: str
    direction: str
    split: str
    images: int
    seed: int
    published: dict[str, Any]
    space: dict[str, dict[str, Any]]
    trials: list[TrialResult] = field(default_factory=list)
    date: str = ""

    @property
    def best(self) -> TrialResult:
        obj_min = self.direction == "minimize"
        # ties keep the earliest trial (the published values first)
        return min(self.trials, key=lambda t: (t.value if obj_min else -t.value, t.number))

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["best"] = dataclasses.asdict(self.best) if self.trials else None
        return d

    def source(self, unit: str = "") -> str:
        """The "sweep: ..." source of each tuned value."""
        b, p = self.best, self.trials[0]
        u = f" {unit}" if unit else ""
        return (f"sweep: {self.split} ({self.images} images), objective {self.objective}, {len(self.trials)} trials "
                f"(TPE seed {self.seed}), {self.date}, best {b.value:.4g} +- {b.ci:.2g}{u} (95% CI over images; "
                f"published values {p.value:.4g} +- {p.ci:.2g})")


def _published(entry: SolverSpec, dataset: str, task: str) -> dict[str, Any]:
    from solvers.base import resolve_config, solver_class
    cls = solver_class(entry.solver_name)
    values = {k: v["value"] for k, v in resolve_config(cls, task, dataset).items()}
    return {**values, **entry.overrides}


#: random (seeded) trials after trial 0 before TPE models the history; fixed, so a longer rerun (more --trials)
#: replays the shorter one's trials exactly from the store
N_STARTUP = 4


def run_study(runner: SweepRunner, protocol: Protocol, entry: SolverSpec, ds: DatasetSpec, task: TaskSpec,
              objective: Objective, trials: int, seed: int = 0, log: Callable[[str], None] = print,
              space: dict[str, Dimension] | None = None) -> Study | None:
    """One study: `trials` trials (trial 0 = the published values) of `entry` on (ds, task) of `protocol`
    (already on its validation split). None when the solver has no search space."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = search_space(entry.solver_name) if space is None else space
    if not space:
        log(f"{entry.name}: no `search:` block in solvers/configs/{entry.solver_name}.yaml; published values kept")
        return None
    published = _published(entry, ds.name, task.name)
    for key, dim in space.items():
        if not dim.contains(published[key], published[key]):
            raise BenchError(f"search {entry.solver_name}.{key}: the published value {published[key]!r} for "
                             f"{ds.name}/{task.name} is outside the search range; widen it")
    study = Study(protocol.name, ds.name, task.name, entry.name, entry.solver_name, objective.label,
                  objective.direction, ds.manifest, ds.count or 0, seed,
                  {k: published[k] for k in space},
                  {k: {"kind": d.kind, "low": d.bounds(published[k])[0] if d.kind != "choice" else None,
                       "high": d.bounds(published[k])[1] if d.kind != "choice" else None,
                       "choices": list(d.choices), "source": d.source} for k, d in space.items()},
                  date=time.strftime("%Y-%m-%d", time.gmtime()))
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=N_STARTUP + 1)
    opt = optuna.create_study(direction=objective.direction, sampler=sampler)
    opt.enqueue_trial({k: published[k] for k in space})
    base = dataclasses.replace(protocol, datasets=[ds], tasks=[task], grid_images=0, tuning="published")
    for number in range(trials):
        trial = opt.ask()
        params = {k: dim.suggest(trial, published[k]) for k, dim in space.items()}
        spec = SolverSpec(entry.name, entry.label, {**entry.overrides, **params}, entry.solver)
        cells = runner.run_protocol(dataclasses.replace(base, solvers=[spec]))
        cell = cells[0]
        records = runner.records_of(cell)
        if not records:
            raise BenchError(f"sweep {entry.name} / {ds.name} / {task.name}: trial {number} wrote no records")
        if all(r["status"] == "unsupported" for r in records):
            log(f"{entry.name} does not support {task.name}; no study")
            return None
        values = [objective.per_image(r) for r in records]
        value, ci = mean_ci(values)
        ok = [r for r in records if r["status"] == "ok"]
        psnr = sum(r["psnr"] for r in ok) / len(ok) if ok else None
        lp = [r["lpips"] for r in ok if r.get("lpips") is not None]
        result = TrialResult(number, params, value, ci, psnr, sum(lp) / len(lp) if lp else None, len(records),
                             len(records) - len(ok), cell.config_hash)
        study.trials.append(result)
        opt.tell(trial, value)
        log(f"{entry.name} / {ds.name} / {task.name} trial {number}: "
            + ", ".join(f"{k}={v}" for k, v in params.items())
            + f" -> {objective.label} {value:.4g} +- {ci:.2g}" + (f" ({result.n_failed} failed)" if result.n_failed else ""))
    return study


def study_path(sweep_dir: Path, study: Study) -> Path:
    return sweep_dir / "studies" / study.dataset / study.task / f"{study.entry}.json"


def save_study(sweep_dir: Path, study: Study) -> Path:
    from common.fileio import atomic_write_text
    path = study_path(sweep_dir, study)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(study.to_json(), indent=1) + "\n")


def load_studies(sweep_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((Path(sweep_dir) / "studies").glob("*/*/*.json"))]


def tuned_values(study: Study, objective: Objective) -> dict[str, dict[str, Any]]:
    """The layer entry of a study: every searched key with the best trial's value and its sweep source."""
    source = study.source(objective.unit)
    return {k: {"value": v, "source": source} for k, v in study.best.params.items()}


# ------------------------------------------------------------------------------------------ the sweep
def sweep(protocol: Protocol, objective: Objective, trials: int, images: int | None, results_dir: Path,
          device: str = "cpu", seed: int = 0, write_layer: bool = True, log: Callable[[str], None] = print,
          tuned_dir: Path | None = None) -> list[Study]:
    """Tune every (dataset, task, solver entry) of `protocol` on its validation splits; write the studies
    and (write_layer) the tuned layer solvers/configs/tuned/<protocol>.yaml. Oracles are skipped."""
    from bench import splits, tuning
    if trials < 1:
        raise BenchError("--trials must be >= 1")
    if images is not None and images < 1:
        raise BenchError("--images must be >= 1")
    val = splits.validation_protocol(protocol, images)
    for ds in val.datasets:
        splits.refuse_test_overlap(ds.manifest, "bench sweep")
    runner = SweepRunner(val, results_dir, device=device, progress=False, log=lambda m: None)
    studies = []
    for ds in val.datasets:
        for task in val.tasks:
            for entry in val.solvers:
                if entry.is_oracle:
                    continue
                study = run_study(runner, val, entry, ds, task, objective, trials, seed, log)
                if study is None:
                    continue
                save_study(results_dir, study)
                studies.append(study)
                if write_layer:  # after each study, so a crash keeps the finished ones
                    tuning.update_layer(protocol.name, {(entry.name, ds.name, task.name):
                                                        tuned_values(study, objective)},
                                        directory=tuned_dir)
    return studies


def budget_line(trials: int, images: int | None, protocol: Protocol) -> str:
    n = images or "all"
    return (f"equal budget per solver: {trials} trials x {n} validation images per (dataset, task) "
            f"(trial 0 = published values)")


# ------------------------------------------------------------------------------------------ NFE sweep
def parse_nfe(text: str) -> tuple[str, list[Any]]:
    """--nfe num_steps=100,250,500 -> ("num_steps", [100, 250, 500])."""
    import yaml
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise BenchError(f"--nfe {text!r}: expected KEY=V1,V2,..., e.g. --nfe num_steps=100,250,500,1000")
    out = []
    for v in values.split(","):
        try:
            out.append(yaml.safe_load(v))
        except yaml.YAMLError:
            raise BenchError(f"--nfe {text!r}: {v!r} is not a value") from None
    return key.strip(), out


def nfe_sweep(protocol: Protocol, key: str, values: list[Any], results_dir: Path, device: str = "cpu",
              log: Callable[[str], None] = print) -> list[Cell]:
    """Run every solver entry of `protocol` at each value of `key` (e.g. its step count) on the protocol's
    own images, into its results folder: one configuration per value, which the figures of `bench table`
    draw as one point each (the curve). The protocol's own value is one of the points if listed."""
    from bench.protocol import apply_sets
    cells: list[Cell] = []
    runner = SweepRunner(protocol, results_dir, device=device, progress=False, log=log)
    for v in values:
        p = protocol
        for entry in protocol.solvers:
            if entry.is_oracle:
                raise BenchError(f"--nfe: {entry.name} has no hyper-parameters; choose solvers with --solver")
        p = apply_sets(protocol, [f"{e.name}.{key}={json.dumps(v)}" for e in protocol.solvers])
        log(f"nfe sweep: {key}={v}")
        cells += runner.run_protocol(p)
    return cells


# ------------------------------------------------------------------------------------------ published vs tuned
def published_vs_tuned(protocol: Protocol, sweep_dir: Path, device: str = "cpu",
                       log: Callable[[str], None] = print, tuned_dir: Path | None = None) -> Path:
    """Run `protocol` on its test split with published and with tuned values (records in
    <sweep_dir>/test, cached), and write <sweep_dir>/published_vs_tuned.md: per dataset, task and entry,
    the values, the validation objective of both, and the test PSNR / LPIPS of both."""
    from bench import tuning
    from bench.tables import _mean_std_ci
    from common.fileio import atomic_write_text
    studies = {(s["dataset"], s["task"], s["entry"]): s for s in load_studies(sweep_dir)}
    if not studies:
        raise BenchError(f"no studies in {sweep_dir}/studies; run `python -m bench sweep --protocol "
                         f"{protocol.name}` first")
    entries = [e for e in protocol.solvers if any(k[2] == e.name for k in studies)]
    p = dataclasses.replace(protocol, solvers=entries, grid_images=0)
    runner = SweepRunner(p, sweep_dir / "test", device=device, progress=False, log=lambda m: None)
    if tuned_dir is not None:
        saved, tuning.TUNED_DIR = tuning.TUNED_DIR, tuned_dir
    try:
        cells = {"published": runner.run_protocol(dataclasses.replace(p, tuning="published")),
                 "tuned": runner.run_protocol(dataclasses.replace(p, tuning="tuned"))}
    finally:
        if tuned_dir is not None:
            tuning.TUNED_DIR = saved

    def stats(cell: Cell) -> tuple[str, str]:
        recs = [r for r in runner.records_of(cell) if r["status"] == "ok"]
        if not recs:
            return "-", "-"
        m_p, _, ci_p = _mean_std_ci([r["psnr"] for r in recs])
        lps = [r["lpips"] for r in recs if r.get("lpips") is not None]
        lp = "-" if not lps else f"{_mean_std_ci(lps)[0]:.3f}"
        return f"{m_p:.2f} [{ci_p[0]:.2f}, {ci_p[1]:.2f}]", lp

    by_key = {k: {c.dataset.name + "|" + c.task.name + "|" + c.solver.name: c for c in v} for k, v in cells.items()}
    one = next(iter(studies.values()))
    lines = [f"# {protocol.name}: published vs tuned hyper-parameters", "",
             f"Tuned by `python -m bench sweep` on the validation split ({one['split']}, {one['images']} images), "
             f"objective {one['objective']}, {len(one['trials'])} trials per solver and task (TPE seed {one['seed']}; "
             f"trial 0 = published values): an equal budget of {len(one['trials'])} x {one['images']} solves per "
             f"solver. Test: the protocol's own images ({', '.join(d.manifest for d in protocol.datasets)}), "
             f"PSNR mean [95% CI] in dB, LPIPS mean. Tuned values: solvers/configs/tuned/{protocol.name}.yaml.", "",
             "| dataset | task | solver | published values | tuned values | validation published | "
             "validation tuned | test PSNR published | test PSNR tuned | test LPIPS published | test LPIPS tuned |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (ds, task, entry), s in sorted(studies.items()):
        key = f"{ds}|{task}|{entry}"
        if key not in by_key["published"]:
            continue
        pub = s["trials"][0]
        best = s["best"]
        pp, pl = stats(by_key["published"][key])
        tp, tl = stats(by_key["tuned"][key])
        fmt = lambda d: ", ".join(f"{k}={v}" for k, v in d.items())  # noqa: E731
        lines.append(f"| {ds} | {task} | {entry} | {fmt(s['published'])} | {fmt(best['params'])} | "
                     f"{pub['value']:.4g} +- {pub['ci']:.2g} | {best['value']:.4g} +- {best['ci']:.2g} | "
                     f"{pp} | {tp} | {pl} | {tl} |")
    out = sweep_dir / "published_vs_tuned.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out
