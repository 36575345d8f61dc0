"""Posterior accuracy on the exact Gaussian image prior (issue 16 part A; `--protocol posterior-gaussian`).

For every registered solver and Table 1 task, K posterior samples per measurement are compared with the exact
posterior of `priors.gaussian.GaussianPrior` (the embedded fit at `image_size`):

* Truths: block "prior" = `prior_truths` images drawn from the prior itself (then the exact posterior is
  calibrated by construction: its coverage is 0.90 in expectation), block "demo" = the demo photographs
  (datasets/demo.json) resized to `image_size`, where it need not be.
* Image size 16 x 16 (protocol `image_size`): the exact per-pixel posterior variances need one conjugate-
  gradient solve per pixel and measurement (768 at 16 x 16, batched; `GaussianPrior.posterior_covariance_apply`
  on the unit vectors), and every solver runs its full budget on K x (truths) images per task; at 32 x 32
  that is 4x the pixels and about 4x the CG iterations. The Table 1 blur kernels (61 px) are wider than the
  image, so the protocol shrinks them (stated in the YAML).
* K = 19 samples (protocol `samples`): the central 90 % interval is then [min, max] of the 19 samples, which
  covers a new draw from the same distribution with probability exactly 18 / 20 = 0.90 (order statistics,
  bench/posterior_metrics.py); K >= 16 as asked, and K + 1 must be a multiple of 20 for an exact 90 % interval
  (39 would halve the Monte-Carlo noise at twice the cost).
* Measurement, operator and solver streams come from bench/seeding.py exactly as in the image tables
  (operator / noise streams per (task, image), solver stream per (task, image, sample j, solver)), and the K
  samples of all measurements of a task run as one batch (each row its own generator: results do not depend
  on the batch).
* References, by the same implementations as the image tables: the exact posterior mean is
  `prior.posterior_mean`; exact posterior samples are `solvers.oracle.Oracle("oracle_sample")` (the oracle row
  of the image tables): one set of K is the reference of the sliced Wasserstein distance, a second set of K is
  the "exact posterior sample" row (its SW is the noise floor); the "prior sample" row is K prior draws.
* Metrics (bench/posterior_metrics.py): RMSE of the sample mean to the exact posterior mean, MMSE gap in dB,
  variance ratio per pixel, 90 % coverage, SW over `directions` random directions in pixel space (the same
  directions for every row); tables give mean ± 95 % CI (t-interval) over measurements.

Records: results/<protocol>/records (bench/store.py), one per (block, image, task, solver) with a config hash and
code fingerprint; a (solver, task) whose records are current is skipped (`rerun=True` recomputes).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import operators
import solvers as solver_pkg
from bench import data as bench_data
from bench import seeding
from bench.errors import BenchError
from bench.fingerprint import fingerprint
from bench.posterior_protocol import protocol_fields
from bench.posterior_metrics import (coverage, mean_ci95, mean_error, mmse_gap_db, random_directions,
                                     sliced_wasserstein, variance_ratio)
from bench.protocol import DatasetSpec
from bench.store import Store, load_records, writer_name
from common.fileio import atomic_write_text
from operators.base import OperatorError
from priors.gaussian import GaussianPrior, embedded
from solvers.base import Solver, SolverDiverged, SolverError, UnsupportedTask, solver_class
from solvers.oracle import Oracle

Tensor = torch.Tensor
REFERENCE_ROWS = {"exact_posterior": "exact posterior sample", "prior_sample": "prior sample"}
METRICS = ("mean_error", "mmse_gap_db", "variance_ratio", "coverage", "sw")
METRIC_LABELS = {"mean_error": "RMSE(mean, exact mean)", "mmse_gap_db": "MMSE gap (dB)",
                 "variance_ratio": "variance ratio", "coverage": "90 % coverage", "sw": "SW"}
KEYS = {"name", "description", "seed", "image_size", "samples", "prior_truths", "directions", "sigma_y", "demo",
        "tasks", "solvers", "exclude", "smoke", "clip"}


@dataclass
class GaussianProtocol:
    name: str
    seed: int = 0
    image_size: int = 16
    samples: int = 19
    prior_truths: int = 8
    directions: int = 200
    sigma_y: float = 0.05
    demo: dict[str, Any] | None = None
    tasks: dict[str, dict] = field(default_factory=dict)
    solvers: dict[str, dict] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)
    description: str = ""
    smoke: bool = False
    clip: bool = False


def parse_protocol(raw: dict, source: str, smoke: bool = False) -> GaussianProtocol:
    data = protocol_fields(raw, source, KEYS, "posterior-gaussian", smoke)
    p = GaussianProtocol(**data)
    if (p.samples + 1) % 20:
        raise BenchError(f"{source}: samples must be 19, 39, 59, ... (K + 1 a multiple of 20 gives an exact 90 % "
                         f"interval from order statistics), got {p.samples}")
    for t in p.tasks:
        if t not in operators.names():
            raise BenchError(f"{source}: unknown task {t!r}; available: {', '.join(operators.names())}")
        try:  # an operator that cannot be built fails here, in one line, not after the first tasks have run
            operators.get(t, image_shape=(3, p.image_size, p.image_size), sigma_y=p.sigma_y, seeds=[0],
                          **((p.tasks[t] or {}).get("params") or {}))
        except (operators.OperatorError, TypeError, ValueError) as err:
            raise BenchError(f"{source}: tasks.{t}: {' '.join(str(err).split())}") from None
    return p


def make_prior(p: GaussianProtocol) -> GaussianPrior:
    """The embedded Gaussian prior at the protocol's size. `clip: false` (default) sets its data range to None:
    the exact posterior is a Gaussian on R^n (prior-drawn truths leave [-1, 1] in ~5 % of pixels), so solvers
    run without clipping their x0 estimates and outputs, and the oracle's samples are not clamped either;
    `clip: true` keeps the image tables' [-1, 1] clipping (then no row, exact ones included, is calibrated)."""
    prior = embedded(p.image_size)
    if not p.clip:
        prior.data_range = None
    return prior


# ---------------------------------------------------------------------------------------------- truths
@dataclass
class Truths:
    block: str
    keys: list[str]  # image keys for the seeding streams
    x: Tensor  # (N, 3, S, S) float32
    sha256: list[str | None]


def truths(p: GaussianProtocol, prior: GaussianPrior) -> list[Truths]:
    out = []
    if p.prior_truths:
        keys = [f"prior/{i:02d}" for i in range(p.prior_truths)]
        gens = [seeding.generator(p.seed, "posterior-truth", k) for k in keys]
        out.append(Truths("prior", keys, prior.sample(len(keys), gens), [None] * len(keys)))
    if p.demo and p.demo.get("count", 1):
        spec = DatasetSpec(name="demo", label="demo", prior="gaussian", image_size=p.image_size,
                           manifest=p.demo["manifest"], root=p.demo.get("root"), count=p.demo.get("count"))
        refs = bench_data.resolve(spec)
        out.append(Truths("demo", [r.key for r in refs], bench_data.load_batch(refs, p.image_size),
                          [r.sha256 for r in refs]))
    return out


# ---------------------------------------------------------------------------------------------- references
@dataclass
class TaskData:
    task: str
    block: Truths
    A: Any
    y: Tensor
    exact_mean: Tensor  # (N, C, H, W)
    exact_var: Tensor  # (N, C, H, W) per-pixel posterior variances
    reference: Tensor  # (N, K, C, H, W) exact posterior samples (SW reference)
    directions: Tensor  # (L, C*H*W)


def _operator(p: GaussianProtocol, task: str, block: Truths) -> Any:
    spec = p.tasks[task] or {}
    shared = bool(spec.get("shared_params", False))
    shape = tuple(block.x.shape[1:])
    return operators.get(task, image_shape=shape, sigma_y=p.sigma_y, shared_params=shared,
                         seeds=[seeding.operator_seed(p.seed, task, k, shared) for k in block.keys],
                         **(spec.get("params") or {}))


def exact_variances(prior: GaussianPrior, A_i: Any) -> Tensor:
    """Per-pixel posterior variances of one measurement: diag(Sigma_post) by one batched solve on unit vectors."""
    n = math.prod(prior.image_shape)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *prior.image_shape)
    cols = prior.posterior_covariance_apply(eye, A_i)
    return torch.diagonal(cols.reshape(n, n)).reshape(prior.image_shape).to(torch.float32)


def oracle_samples(prior: GaussianPrior, y: Tensor, A: Any, keys: list[str], K: int, row: str, p: GaussianProtocol,
                   task: str) -> Tensor:
    """(N, K, C, H, W) exact posterior samples through the image tables' oracle, one stream per (image, j, row)."""
    N = y.shape[0]
    idx = torch.arange(N).repeat_interleave(K)
    gens = [seeding.solver_generator(p.seed, task, f"{keys[i]}#{j}", row) for i in range(N) for j in range(K)]
    out = Oracle("oracle_sample", prior).solve(y[idx], A.select(idx.tolist()), gens)
    return out.reshape(N, K, *prior.image_shape)


def prepare_task(p: GaussianProtocol, prior: GaussianPrior, task: str, block: Truths) -> TaskData:
    A = _operator(p, task, block)
    y = A.measure(block.x, [seeding.noise_generator(p.seed, task, k) for k in block.keys])
    means, variances = [], []
    for i in range(y.shape[0]):
        A_i = A.select([i])
        means.append(prior.posterior_mean(y[i:i + 1], A_i))
        variances.append(exact_variances(prior, A_i))
    ref = oracle_samples(prior, y, A, block.keys, p.samples, "exact-reference", p, task)
    n = math.prod(prior.image_shape)
    dirs = random_directions(p.directions, n, seeding.generator(p.seed, "posterior-directions", task, block.block))
    return TaskData(task, block, A, y, torch.cat(means), torch.stack(variances), ref, dirs)


# ---------------------------------------------------------------------------------------------- solvers
def solver_names(p: GaussianProtocol, only: list[str] | None = None) -> list[str]:
    names = [n for n in solver_pkg.available() if n not in p.exclude]
    if only:
        unknown = sorted(set(only) - set(names) - set(REFERENCE_ROWS))
        if unknown:
            raise BenchError(f"unknown solver(s) {', '.join(unknown)}; available: {', '.join(names)}")
    return list(REFERENCE_ROWS) + names if not only else [n for n in list(REFERENCE_ROWS) + names if n in only]


def solver_overrides(p: GaussianProtocol, name: str) -> dict[str, Any]:
    entry = p.solvers.get(name) or {}
    out: dict[str, Any] = dict(solver_class(name).smoke) if p.smoke else {}
    for k, v in (entry.get("overrides") or {}).items():
        out[k] = v["value"] if isinstance(v, dict) and "value" in v else v
    return out


def samples_of(p: GaussianProtocol, prior: GaussianPrior, td: TaskData, name: str) -> tuple[Tensor, dict[str, int]]:
    """(N, K, C, H, W) samples of one row and its per-sample NFE."""
    K, N = p.samples, td.y.shape[0]
    if name == "exact_posterior":
        return oracle_samples(prior, td.y, td.A, td.block.keys, K, "oracle_sample", p, td.task), {}
    if name == "prior_sample":
        gens = [seeding.solver_generator(p.seed, td.task, f"{k}#{j}", name) for k in td.block.keys for j in range(K)]
        return prior.sample(N * K, gens).reshape(N, K, *prior.image_shape), {}
    solver = solver_pkg.get(name, prior, task=td.task, **solver_overrides(p, name))
    if not solver.supports(td.A):
        raise UnsupportedTask(f"{name} does not support task {td.task}")
    idx = torch.arange(N).repeat_interleave(K)
    gens = [seeding.solver_generator(p.seed, td.task, f"{k}#{j}", name) for k in td.block.keys for j in range(K)]
    out = solver.solve(td.y[idx], td.A.repeat_interleave(K), gens)
    nfe = {"nfe_forward": prior.nfe.forward // (N * K), "nfe_backward": prior.nfe.backward // (N * K)}
    return out.reshape(N, K, *prior.image_shape), nfe


def score(td: TaskData, samples: Tensor, i: int) -> dict[str, float]:
    s = samples[i].reshape(samples.shape[1], -1)
    x = td.block.x[i].reshape(-1)
    return {"mean_error": mean_error(s, td.exact_mean[i].reshape(-1)),
            "mmse_gap_db": mmse_gap_db(s, td.exact_mean[i].reshape(-1), x),
            "variance_ratio": variance_ratio(s, td.exact_var[i].reshape(-1)),
            "coverage": coverage(s, x),
            "sw": sliced_wasserstein(s, td.reference[i].reshape(s.shape[0], -1), td.directions)}


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def _identity(p: GaussianProtocol, prior: GaussianPrior, td: TaskData, name: str) -> tuple[str, str]:
    params: Any = {}
    cls: Any = Oracle
    if name not in REFERENCE_ROWS:
        try:
            solver = solver_pkg.get(name, prior, task=td.task, **solver_overrides(p, name))
            params, cls = solver.describe()["params"], type(solver)
        except (SolverError, TypeError, ValueError) as err:
            params = {"error": _one_line(err)}
            cls = Solver
    config = {"protocol": p.name, "seed": p.seed, "image_size": p.image_size, "clip": p.clip, "samples": p.samples,
              "directions": p.directions, "sigma_y": p.sigma_y, "task": td.task, "task_spec": p.tasks[td.task],
              "block": td.block.block, "solver": name, "params": params}
    chash = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    fp = fingerprint(cls, prior, td.A, extra_modules=("bench.posterior", "bench.posterior_metrics",
                                                     "bench.seeding", "bench.data")).digest
    return chash, fp


def run_row(p: GaussianProtocol, prior: GaussianPrior, td: TaskData, name: str) -> list[dict]:
    chash, fp = _identity(p, prior, td, name)
    base = {"dataset": td.block.block, "task": td.task, "solver": name, "seed": p.seed, "config_hash": chash,
            "fingerprint": fp, "protocol": p.name, "status": "ok", "message": "", "nfe_forward": 0,
            "nfe_backward": 0}
    N = td.y.shape[0]
    t0 = time.perf_counter()
    try:
        samples, nfe = samples_of(p, prior, td, name)
        base.update(nfe)
        scores = [score(td, samples, i) for i in range(N)]
    except (UnsupportedTask, OperatorError) as err:
        base.update(status="unsupported", message=_one_line(err))
        scores = [{m: math.nan for m in METRICS}] * N
    except SolverDiverged as err:
        base.update(status="diverged", message=_one_line(err))
        scores = [{m: math.nan for m in METRICS}] * N
    except Exception as err:  # noqa: BLE001 - a failing solver is a row of the table, not a crash
        base.update(status="error", message=_one_line(err))
        scores = [{m: math.nan for m in METRICS}] * N
    seconds = (time.perf_counter() - t0) / N
    return [{**base, "image_id": td.block.keys[i], "image_sha256": td.block.sha256[i], "seconds": seconds,
             **scores[i]} for i in range(N)]


def run(p: GaussianProtocol, out_dir: Path, only: list[str] | None = None, rerun: bool = False,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    out_dir = Path(out_dir)
    prior = make_prior(p)
    store = Store(out_dir, writer_name(0))
    existing = load_records(out_dir) if (out_dir / "records").exists() else []
    names = solver_names(p, only)
    t_start = time.perf_counter()
    ran: dict[str, float] = {}
    for block in truths(p, prior):
        for task in p.tasks:
            td: TaskData | None = None
            for name in names:
                if td is None:
                    t0 = time.perf_counter()
                    td = prepare_task(p, prior, task, block)
                    ran["(exact references)"] = ran.get("(exact references)", 0.0) + time.perf_counter() - t0
                ident = _identity(p, prior, td, name)
                mine = [r for r in existing if (r["dataset"], r["task"], r["solver"]) == (block.block, task, name)]
                if not rerun and len(mine) >= len(block.keys) and all(
                        (r["config_hash"], r.get("fingerprint")) == ident and r["status"] != "error" for r in mine):
                    continue
                t0 = time.perf_counter()
                recs = run_row(p, prior, td, name)
                store.append(recs)
                ran[name] = ran.get(name, 0.0) + time.perf_counter() - t0
                cov = mean_ci95([r["coverage"] for r in recs])[0]
                vr = mean_ci95([r["variance_ratio"] for r in recs])[0]
                log(f"{block.block:6s} {task:16s} {name:16s} {recs[0]['status']:11s} coverage {cov:.3f} "
                    f"var ratio {vr:.3f}  {time.perf_counter() - t0:6.1f} s")
    summary = {"protocol": p.name, "seconds_this_run": round(time.perf_counter() - t_start, 1),
               "seconds_by_row_this_run": {k: round(v, 1) for k, v in sorted(ran.items())},
               "threads": torch.get_num_threads()}
    write_tables(p, out_dir, summary)
    return summary


# ---------------------------------------------------------------------------------------------- tables
def summarise(p: GaussianProtocol, records: list[dict]) -> list[dict]:
    by: dict[tuple, list[dict]] = {}
    for r in records:
        by.setdefault((r["dataset"], r["task"], r["solver"]), []).append(r)
    rows = []
    for (block, task, solver), recs in sorted(by.items()):
        row = {"block": block, "task": task, "solver": solver, "n": len(recs),
               "status": "/".join(sorted({r["status"] for r in recs})),
               "message": next((r["message"] for r in recs if r["message"]), ""),
               "nfe": max(r["nfe_forward"] + r["nfe_backward"] for r in recs),
               "seconds_per_measurement": sum(r["seconds"] for r in recs) / len(recs)}
        for m in METRICS:
            mean, half, _ = mean_ci95([r[m] for r in recs])
            row[m], row[f"{m}_ci95"] = mean, half
        rows.append(row)
    return rows


def _fmt(mean: float, half: float, digits: int) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if not math.isnan(half) else f"{mean:.{digits}f}"


def markdown(p: GaussianProtocol, rows: list[dict], summary: dict | None) -> str:
    out = [f"# Posterior accuracy on the exact Gaussian prior ({p.name})", "",
           f"{p.image_size}x{p.image_size} RGB, sigma_y = {p.sigma_y}, K = {p.samples} samples per measurement, "
           f"mean ± 95 % CI over measurements. Block `prior`: truths drawn from the prior (exact posterior calibrated: "
           f"coverage 0.90 in expectation); block `demo`: photographs. Variance ratio per pixel (1 = calibrated, "
           f"< 1 overconfident); SW over {p.directions} random directions against K exact posterior samples "
           f"(the exact-posterior row is the noise floor). Metric card: metric_card.json.", ""]
    digits = {"mean_error": 3, "mmse_gap_db": 2, "variance_ratio": 2, "coverage": 2, "sw": 3}
    for block in sorted({r["block"] for r in rows}, key=lambda b: (b != "prior", b)):
        for task in p.tasks:
            mine = [r for r in rows if r["block"] == block and r["task"] == task]
            if not mine:
                continue
            out += [f"## {block} / {task}", "", "| row | NFE | " + " | ".join(METRIC_LABELS[m] for m in METRICS)
                    + " |", "|---|---|" + "---|" * len(METRICS)]
            order = list(REFERENCE_ROWS) + sorted({r["solver"] for r in mine} - set(REFERENCE_ROWS))
            for s in order:
                r = next((r for r in mine if r["solver"] == s), None)
                if r is None:
                    continue
                label = f"*{REFERENCE_ROWS[s]}*" if s in REFERENCE_ROWS else s
                if r["status"] in ("unsupported", "error"):
                    out.append(f"| {label} | - | " + " | ".join([r["status"]] * len(METRICS)) + " |")
                    continue
                out.append(f"| {label} | {r['nfe'] or '-'} | "
                           + " | ".join(_fmt(r[m], r[f'{m}_ci95'], digits[m]) for m in METRICS) + " |")
            out.append("")
    notes = sorted({(r["solver"], r["status"], r["message"]) for r in rows if r["status"] != "ok"})
    if notes:
        out += ["Rows that did not run (first message per solver):", ""]
        seen = set()
        for s, st, m in notes:
            if s not in seen:
                seen.add(s)
                out.append(f"* {s} ({st}): {m}")
        out.append("")
    if summary:
        out += [f"Wall time of the last run: {summary['seconds_this_run']} s on {summary['threads']} thread(s).", ""]
    return "\n".join(out)


def metric_card(p: GaussianProtocol) -> dict[str, str]:
    return {
        "mean_error": "RMSE over pixels between the mean of the K samples and the exact posterior mean ([-1, 1] units)",
        "mmse_gap_db": "PSNR(exact posterior mean, truth) - PSNR(sample mean, truth) = 10 log10(MSE ratio), dB; "
                       "peak-independent, no clipping",
        "variance_ratio": "mean over pixels of unbiased sample variance / exact per-pixel posterior variance "
                          "(diag of Sigma_post by CG on unit vectors); per-pixel basis",
        "coverage": f"fraction of pixels whose true value lies in [min, max] of the K = {p.samples} samples "
                    "(exactly 0.90 for exact samples when the truth is drawn from the prior)",
        "sw": f"sliced Wasserstein: mean over {p.directions} random unit directions in pixel space of the 1-D W1 "
              f"between the K samples and K exact posterior samples (the oracle's)",
        "aggregation": "mean ± half width of the 95 % t-interval over measurements",
        "image_size": str(p.image_size), "sigma_y": f"{p.sigma_y} ([-1, 1] pixel std)",
    }


def write_tables(p: GaussianProtocol, out_dir: Path, summary: dict | None = None) -> list[dict]:
    # rows the protocol now excludes are not shown, even if records of an earlier run are stored
    records = [r for r in load_records(out_dir) if r.get("protocol") == p.name and r.get("solver") not in p.exclude]
    rows = summarise(p, records)
    cols = ["block", "task", "solver", "status", "n", "nfe", "seconds_per_measurement"] + \
        [c for m in METRICS for c in (m, f"{m}_ci95")] + ["message"]
    lines = [",".join(cols)]
    for r in rows:
        lines.append(",".join(_csv(r[c]) for c in cols))
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "posterior_gaussian.csv", "\n".join(lines) + "\n")
    atomic_write_text(out_dir / "posterior_gaussian.md", markdown(p, rows, summary))
    atomic_write_text(out_dir / "metric_card.json", json.dumps(metric_card(p), indent=2) + "\n")
    if summary is not None:
        atomic_write_text(out_dir / "timing.json", json.dumps(summary, indent=2) + "\n")
    return rows


def _csv(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    s = str(v)
    return f'"{s}"' if ("," in s or '"' in s) else s
