"""The Gaussian-mixture posterior benchmark of MCGdiff (spec gmm-benchmark.md, Variant M), on our solvers.

Cells: d in {8, 80, 800} x d_y in {1, 2, 4} x n_steps in {20, 100}; 20 problems per cell; per problem 2000
samples from every registered solver, scored by sliced Wasserstein (SW) against 2000 exact posterior samples.

* Prior (§1): `priors.gmm_vector.VectorGMMPrior.grid25(d)`, identity covariances, weights z^2 / sum z^2 with
  z ~ N(0, I_25), one weight vector per (n_steps, d) drawn from the stream ("gmm-weights", n_steps, d) of the
  protocol seed (the MCGdiff code draws them from an unseeded / carried-over global generator: not
  reproducible, spec §1 caveat). Vectors are (B, 1, 1, d).
* Schedule (§1): betas linspace(0.02, 1e-4, 999), abar_{-1} = 1 (`mcgdiff_gmm_schedule`), and the adapted
  n_steps grid (`adapted_timesteps`, equal to the spec's lists). The prior of a cell carries the schedule
  *respaced* onto that grid (n_steps - 1 entries, priors/explicit_schedule.py): a solver whose `num_steps` is
  set to n_steps - 1 steps exactly through the grid (t = 999 -> ... -> t = 0), unchanged. Solvers with their
  own continuous noise grid (SPGD/DAPS: EDM sigmas) use it with the protocol's step counts; the table's NFE
  column shows what each spent.
* Problems (§2): problem i of a cell uses torch.Generator(seed 2^a 3^b 5^c + i + protocol seed), a, b, c the
  indices of d in [800, 80, 8], d_y in [1, 2, 4], n_steps in [20, 100], and draws, in this order,
  A0 ~ N(0, 1)^{d_y x d} (SVD U S V^T), s = sorted-descending Uniform(0, 1)^{d_y}, x* ~ prior,
  sigma_y = u max(s) with u ~ U(0, 1), y = A x* + sigma_y eps, with A = U diag(s) V^T_{1:d_y}
  (`operators.dense.DenseOperator`). (The spec's retry with seed + 1 on a ValueError is not needed: our
  construction never raises.)
* Exact posterior (§3): `VectorGMMPrior.posterior` (float64): 2000 reference samples, 2000 more for the
  "exact posterior sample" row (its SW to the reference is the noise floor), and 2000 prior samples for the
  "prior sample" row.
* Solvers: every registered solver (`solvers.available()`, so new ones join automatically) through the
  existing layers: `solvers.get(name, prior, task="dense", **overrides)`, `solve(y, A, generator)`, with the
  2000 samples of one problem as one batch (y repeated, one generator per (solver, cell, problem): drawn at
  once, reproducible for that fixed batch). Overrides: `num_steps` = n_steps - 1 when the solver has that
  hyper-parameter, then the protocol's per-solver `overrides` and `steps` blocks. A solver whose
  `supports(A)` is false or which raises `UnsupportedTask` gets an "unsupported" row; any other exception an
  "error" row with its one-line message. Solvers run in the protocol's `solver_dtype` (float32).
* Metric (§4): SW = mean over L unit directions (L = `directions`, 1000 here, the MCGdiff sibling scripts'
  value; the same directions for every row of a problem) of the 1-D W1 distance; aggregated per cell as
  mean +- 1.96 std / sqrt(n) (NaN ignored by the mean and std, counted in n).

Incremental: one record per (cell, problem, solver) in results/<protocol>/records/*.jsonl (bench/store.py),
with a config hash (solver parameters + everything that decides the problem) and a code fingerprint
(bench/fingerprint.py). A (solver, cell) whose 20 records are current is skipped, so adding a solver runs only
that solver; `rerun=True` recomputes. Each record carries its wall time; the tables report the totals.
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

import solvers as solver_pkg
from solvers.base import resolve_config, solver_class
from bench.errors import BenchError
from bench.fingerprint import fingerprint
from bench.posterior_protocol import protocol_fields
from bench.posterior_metrics import mean_ci, random_directions, sliced_wasserstein
from bench.seeding import stream_seed
from bench.store import Store, load_records, writer_name
from common.fileio import atomic_write_text
from operators.base import OperatorError
from operators.dense import DenseOperator
from priors.explicit_schedule import ExplicitSchedule, adapted_timesteps, mcgdiff_gmm_schedule
from priors.gmm_vector import VectorGMMPrior
from solvers.base import SolverDiverged, SolverError, UnsupportedTask

Tensor = torch.Tensor
SPEC_DIMS, SPEC_DYS, SPEC_STEPS = (800, 80, 8), (1, 2, 4), (20, 100)
REFERENCE_ROWS = {"exact_posterior": "exact posterior sample (noise floor)", "prior_sample": "prior sample"}
PROTOCOL_KEYS = {"name", "description", "seed", "dims", "measurement_dims", "steps", "problems", "samples",
                 "directions", "variance", "spacing", "solver_dtype", "solvers", "exclude", "smoke"}


@dataclass
class GMMProtocol:
    name: str
    seed: int = 0
    dims: list[int] = field(default_factory=lambda: [8, 80, 800])
    measurement_dims: list[int] = field(default_factory=lambda: [1, 2, 4])
    steps: list[int] = field(default_factory=lambda: [20, 100])
    problems: int = 20
    samples: int = 2000
    directions: int = 1000
    variance: float = 1.0
    spacing: float = 8.0
    solver_dtype: str = "float32"
    solvers: dict[str, dict] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)
    description: str = ""
    smoke: bool = False

    @property
    def dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "float64": torch.float64}[self.solver_dtype]


def parse_protocol(raw: dict, source: str, smoke: bool = False) -> GMMProtocol:
    data = protocol_fields(raw, source, PROTOCOL_KEYS, "posterior-gmm", smoke)
    p = GMMProtocol(**data)
    if any(d < 2 or d % 2 for d in p.dims):
        raise BenchError(f"{source}: dims must be even numbers >= 2 (the 2-D grid is tiled), got {p.dims}")
    if any(m < 1 or m > min(p.dims) for m in p.measurement_dims):
        raise BenchError(f"{source}: measurement_dims must be in [1, min(dims)], got {p.measurement_dims}")
    if p.solver_dtype not in ("float32", "float64"):
        raise BenchError(f"{source}: solver_dtype must be float32 or float64, got {p.solver_dtype!r}")
    for n in p.steps:
        try:
            adapted_timesteps(mcgdiff_gmm_schedule(), int(n))
        except ValueError as err:
            raise BenchError(f"{source}: steps {n}: {err}") from None
    return p


# ---------------------------------------------------------------------------------------------- problems
def spec_seed(d: int, d_y: int, n_steps: int, index: int) -> int:
    """2^a 3^b 5^c + i (spec §2); cells outside the spec's lists use the next index of each list."""
    a = SPEC_DIMS.index(d) if d in SPEC_DIMS else len(SPEC_DIMS)
    b = SPEC_DYS.index(d_y) if d_y in SPEC_DYS else len(SPEC_DYS)
    c = SPEC_STEPS.index(n_steps) if n_steps in SPEC_STEPS else len(SPEC_STEPS)
    return 2**a * 3**b * 5**c + index


def cell_schedule(n_steps: int) -> tuple[list[int], ExplicitSchedule]:
    """(the adapted grid in the spec's t-indexing, the schedule respaced onto it: abar at t = grid[1:])."""
    full = mcgdiff_gmm_schedule()
    grid = adapted_timesteps(full, n_steps)
    return grid, full.respaced([t - 1 for t in grid[1:]])


def cell_prior(p: GMMProtocol, d: int, n_steps: int) -> VectorGMMPrior:
    g = torch.Generator().manual_seed(stream_seed(p.seed, "gmm-weights", n_steps, d))
    z = torch.randn(25, generator=g, dtype=torch.float64)
    _, schedule = cell_schedule(n_steps)
    return VectorGMMPrior.grid25(d, z**2 / (z**2).sum(), spacing=p.spacing, variance=p.variance, schedule=schedule)


@dataclass
class Problem:
    index: int
    seed: int
    A: DenseOperator
    x_star: Tensor  # (1, 1, 1, d) float64
    y: Tensor  # (1, d_y) float64
    sigma_y: float


def make_problem(prior: VectorGMMPrior, d: int, d_y: int, seed: int, index: int = 0) -> Problem:
    """Spec §2, draws in the spec's order from one generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    A0 = torch.randn((d_y, d), generator=g, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(A0, full_matrices=False)
    s = torch.rand(d_y, generator=g, dtype=torch.float64).sort(descending=True).values
    x_star = prior.sample(1, g, dtype=torch.float64)
    sigma_y = float(torch.rand(1, generator=g, dtype=torch.float64)) * float(s.max())
    A = DenseOperator((1, 1, d), sigma_y=sigma_y, U=U, s=s, V=Vh.T)
    y = A.forward(x_star) + sigma_y * torch.randn((1, d_y), generator=g, dtype=torch.float64)
    return Problem(index, seed, A, x_star, y, sigma_y)


@dataclass
class Cell:
    d: int
    d_y: int
    n_steps: int

    @property
    def key(self) -> str:
        return f"d{self.d}-dy{self.d_y}-steps{self.n_steps}"


def cells(p: GMMProtocol) -> list[Cell]:
    return [Cell(d, m, n) for n in p.steps for d in p.dims for m in p.measurement_dims]


@dataclass
class CellData:
    cell: Cell
    prior: VectorGMMPrior
    problems: list[Problem]
    references: list[Tensor]  # (n, d) exact posterior samples per problem
    directions: list[Tensor]  # (L, d) per problem


def prepare_cell(p: GMMProtocol, cell: Cell) -> CellData:
    prior = cell_prior(p, cell.d, cell.n_steps)
    problems, refs, dirs = [], [], []
    for i in range(p.problems):
        prob = make_problem(prior, cell.d, cell.d_y, p.seed + spec_seed(cell.d, cell.d_y, cell.n_steps, i), i)
        g = torch.Generator().manual_seed(stream_seed(p.seed, "gmm-reference", cell.key, i))
        refs.append(prior.posterior(prob.y, prob.A).samples(p.samples, g)[0])
        gd = torch.Generator().manual_seed(stream_seed(p.seed, "gmm-directions", cell.key, i))
        dirs.append(random_directions(p.directions, cell.d, gd))
        problems.append(prob)
    return CellData(cell, prior, problems, refs, dirs)


def reference_samples(p: GMMProtocol, data: CellData, row: str, i: int) -> Tensor:
    """The n samples of a reference row for problem i: a second exact set, or prior samples."""
    prob = data.problems[i]
    g = torch.Generator().manual_seed(stream_seed(p.seed, "gmm-row", row, data.cell.key, i))
    if row == "exact_posterior":
        return data.prior.posterior(prob.y, prob.A).samples(p.samples, g)[0]
    return data.prior.sample(p.samples, g, dtype=torch.float64).reshape(p.samples, -1)


# ---------------------------------------------------------------------------------------------- solvers
def solver_names(p: GMMProtocol, only: list[str] | None = None) -> list[str]:
    names = [n for n in solver_pkg.available() if n not in p.exclude]
    if only:
        unknown = sorted(set(only) - set(names) - set(REFERENCE_ROWS))
        if unknown:
            raise BenchError(f"unknown solver(s) {', '.join(unknown)}; available: {', '.join(names)}")
        names = [n for n in names if n in only]
    return names


def solver_overrides(p: GMMProtocol, name: str, n_steps: int) -> dict[str, Any]:
    """num_steps = n_steps - 1 if the solver has it, then the protocol's `overrides`, then its `steps[n_steps]`
    block, then (smoke protocols only) the solver's `smoke` overrides except num_steps (the grid stays)."""
    entry = p.solvers.get(name) or {}
    bad = sorted(set(entry) - {"overrides", "steps", "note"})
    if bad:
        raise BenchError(f"protocol {p.name}: solver {name!r}: unknown key(s) {', '.join(bad)} "
                         f"(allowed: overrides, steps, note)")
    params = resolve_config(solver_class(name), "dense", None)
    out: dict[str, Any] = {}
    if "num_steps" in params:
        out["num_steps"] = n_steps - 1
    for block in (entry.get("overrides") or {}, (entry.get("steps") or {}).get(n_steps) or {}):
        for k, v in block.items():
            out[k] = v["value"] if isinstance(v, dict) and "value" in v else v
    if p.smoke:
        out.update({k: v for k, v in solver_class(name).smoke.items() if k != "num_steps"})
    return out


def _config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _problem_config(p: GMMProtocol, cell: Cell) -> dict[str, Any]:
    return {"protocol": p.name, "seed": p.seed, "cell": cell.key, "samples": p.samples, "directions": p.directions,
            "variance": p.variance, "spacing": p.spacing, "solver_dtype": p.solver_dtype, "problems": p.problems}


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def run_solver_on_cell(p: GMMProtocol, data: CellData, name: str) -> list[dict]:
    """One record per problem for solver `name` on a prepared cell."""
    cell = data.cell
    records = []
    base = {"dataset": cell.key, "task": "dense", "solver": name, "seed": p.seed, "image_sha256": None,
            "d": cell.d, "d_y": cell.d_y, "n_steps": cell.n_steps}
    try:
        overrides = solver_overrides(p, name, cell.n_steps) if name not in REFERENCE_ROWS else {}
        solver = solver_pkg.get(name, data.prior, task="dense", **overrides) if name not in REFERENCE_ROWS else None
    except (SolverError, TypeError, ValueError) as err:
        solver, overrides = None, {"error": _one_line(err)}
    desc = solver.describe()["params"] if solver is not None else overrides
    config = {**_problem_config(p, cell), "solver": name, "params": desc}
    chash = _config_hash(config)
    fp = fingerprint(type(solver) if solver is not None else VectorGMMPrior, data.prior, DenseOperator,
                     extra_modules=("bench.posterior_gmm", "bench.posterior_metrics", "bench.seeding")).digest
    for i, prob in enumerate(data.problems):
        rec = {**base, "image_id": f"{i:02d}", "problem_seed": prob.seed, "sigma_y": prob.sigma_y,
               "config_hash": chash, "fingerprint": fp, "config": config, "status": "ok", "message": "",
               "sw": math.nan, "nfe_forward": 0, "nfe_backward": 0, "seconds": 0.0}
        t0 = time.perf_counter()
        try:
            if name in REFERENCE_ROWS:
                samples = reference_samples(p, data, name, i)
            elif solver is None:
                raise SolverError(overrides["error"])
            else:
                if not solver.supports(prob.A):
                    raise UnsupportedTask(f"{name}.supports(dense operator) is False")
                y = prob.y.to(p.dtype).expand(p.samples, -1).contiguous()
                g = torch.Generator().manual_seed(stream_seed(p.seed, "solver", cell.key, i, name))
                samples = solver.solve(y, prob.A, g).reshape(p.samples, -1)
                rec["nfe_forward"], rec["nfe_backward"] = solver.prior.nfe.forward // p.samples, \
                    solver.prior.nfe.backward // p.samples
            rec["sw"] = sliced_wasserstein(samples, data.references[i], data.directions[i])
            if not math.isfinite(rec["sw"]):
                rec["status"], rec["message"] = "diverged", "non-finite samples"
        except (UnsupportedTask, OperatorError) as err:
            rec["status"], rec["message"] = "unsupported", _one_line(err)
        except SolverDiverged as err:
            rec["status"], rec["message"] = "diverged", _one_line(err)
        except Exception as err:  # noqa: BLE001 - a failing solver is a row of the table, not a crash
            rec["status"], rec["message"] = "error", _one_line(err)
        rec["seconds"] = time.perf_counter() - t0
        records.append(rec)
        if rec["status"] == "unsupported" or (rec["status"] == "error" and solver is None):
            # the same for every problem of the cell: fill the remaining rows without trying again
            for j in range(i + 1, len(data.problems)):
                records.append({**rec, "image_id": f"{j:02d}", "problem_seed": data.problems[j].seed,
                                "sigma_y": data.problems[j].sigma_y, "seconds": 0.0})
            break
    return records


def _current(existing: list[dict], cell: Cell, name: str, chash_fp: tuple[str, str] | None, problems: int) -> bool:
    mine = [r for r in existing if r["dataset"] == cell.key and r["solver"] == name]
    if len(mine) < problems or chash_fp is None:
        return False
    return all((r["config_hash"], r.get("fingerprint")) == chash_fp and r["status"] != "error" for r in mine)


def expected_identity(p: GMMProtocol, data: CellData, name: str) -> tuple[str, str] | None:
    """(config hash, fingerprint) a current record of (solver, cell) carries; None if it cannot be built."""
    try:
        overrides = solver_overrides(p, name, data.cell.n_steps) if name not in REFERENCE_ROWS else {}
        solver = solver_pkg.get(name, data.prior, task="dense", **overrides) if name not in REFERENCE_ROWS else None
    except (SolverError, TypeError, ValueError):
        return None
    desc = solver.describe()["params"] if solver is not None else {}
    config = {**_problem_config(p, data.cell), "solver": name, "params": desc}
    fp = fingerprint(type(solver) if solver is not None else VectorGMMPrior, data.prior, DenseOperator,
                     extra_modules=("bench.posterior_gmm", "bench.posterior_metrics", "bench.seeding")).digest
    return _config_hash(config), fp


def run(p: GMMProtocol, out_dir: Path, only: list[str] | None = None, rerun: bool = False,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every (solver, cell) that is not current; write the tables. Returns the timing summary."""
    out_dir = Path(out_dir)
    store = Store(out_dir, writer_name(0))
    existing = load_records(out_dir) if (out_dir / "records").exists() else []
    names = list(REFERENCE_ROWS) + solver_names(p, only)
    if only:
        names = [n for n in names if n in only]
    t_start = time.perf_counter()
    ran: dict[str, float] = {}
    for cell in cells(p):
        data: CellData | None = None
        for name in names:
            if data is None:
                t0 = time.perf_counter()
                data = prepare_cell(p, cell)
                ran["(exact posterior references)"] = ran.get("(exact posterior references)", 0.0) + \
                    time.perf_counter() - t0
            if not rerun and _current(existing, cell, name, expected_identity(p, data, name), p.problems):
                continue
            t0 = time.perf_counter()
            recs = run_solver_on_cell(p, data, name)
            store.append(recs)
            dt = time.perf_counter() - t0
            ran[name] = ran.get(name, 0.0) + dt
            status = sorted({r["status"] for r in recs})
            sw = mean_ci([r["sw"] for r in recs])
            log(f"{cell.key:22s} {name:16s} {'/'.join(status):12s} SW {sw[0]:.3f} +- {sw[1]:.3f}  {dt:6.1f} s")
    total = time.perf_counter() - t_start
    summary = {"protocol": p.name, "seconds_this_run": round(total, 1),
               "seconds_by_solver_this_run": {k: round(v, 1) for k, v in sorted(ran.items())},
               "threads": torch.get_num_threads()}
    write_tables(p, out_dir, summary)
    return summary


# ---------------------------------------------------------------------------------------------- tables
def _fmt(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f} ± {half:.2f}" if not math.isnan(half) else f"{mean:.2f}"


def summarise(p: GMMProtocol, records: list[dict]) -> list[dict]:
    """One row per (n_steps, d, d_y, solver): SW mean, 1.96 std / sqrt(n), n, status, NFE, seconds."""
    rows = []
    keys = {(c.n_steps, c.d, c.d_y, c.key) for c in cells(p)}
    by: dict[tuple, list[dict]] = {}
    for r in records:
        by.setdefault((r["dataset"], r["solver"]), []).append(r)
    for n_steps, d, d_y, key in sorted(keys):
        for (ds, solver), recs in sorted(by.items()):
            if ds != key:
                continue
            ok = [r for r in recs if r["status"] == "ok"]
            status = "ok" if len(ok) == len(recs) else "/".join(sorted({r["status"] for r in recs}))
            mean, half, n = mean_ci([r["sw"] if r["status"] in ("ok", "diverged") else math.nan for r in recs])
            msgs = sorted({r["message"] for r in recs if r["message"]})
            rows.append({"n_steps": n_steps, "d": d, "d_y": d_y, "solver": solver, "status": status,
                         "sw_mean": mean, "sw_ci": half, "n": n, "n_ok": len(ok),
                         "nfe_forward": max((r["nfe_forward"] for r in recs), default=0),
                         "nfe_backward": max((r["nfe_backward"] for r in recs), default=0),
                         "seconds": sum(r["seconds"] for r in recs), "message": msgs[0] if msgs else ""})
    return rows


def write_tables(p: GMMProtocol, out_dir: Path, summary: dict[str, Any] | None = None) -> list[dict]:
    # rows the protocol now excludes are not shown, even if records of an earlier run are stored
    records = [r for r in load_records(out_dir)
               if r.get("config", {}).get("protocol") == p.name and r.get("solver") not in p.exclude]
    rows = summarise(p, records)
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = ["n_steps", "d", "d_y", "solver", "status", "sw_mean", "sw_ci", "n", "n_ok", "nfe_forward",
            "nfe_backward", "seconds", "message"]
    lines = [",".join(cols)]
    for r in rows:
        lines.append(",".join(_csv(r[c]) for c in cols))
    atomic_write_text(out_dir / "posterior_gmm.csv", "\n".join(lines) + "\n")
    atomic_write_text(out_dir / "posterior_gmm.md", markdown(p, rows, summary))
    atomic_write_text(out_dir / "metric_card.json", json.dumps(metric_card(p), indent=2) + "\n")
    if summary is not None:
        timing = {"last_run": summary, "total_seconds_in_records": round(sum(r["seconds"] for r in records), 1),
                  "seconds_by_solver_in_records": _seconds_by_solver(records)}
        atomic_write_text(out_dir / "timing.json", json.dumps(timing, indent=2) + "\n")
    return rows


def _seconds_by_solver(records: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in records:
        out[r["solver"]] = out.get(r["solver"], 0.0) + r["seconds"]
    return {k: round(v, 1) for k, v in sorted(out.items())}


def _csv(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    s = str(v)
    return f'"{s}"' if ("," in s or '"' in s) else s


def markdown(p: GMMProtocol, rows: list[dict], summary: dict[str, Any] | None = None) -> str:
    out = [f"# Gaussian-mixture posterior benchmark ({p.name}; MCGdiff Variant M)", "",
           f"Sliced Wasserstein (mean of 1-D W1 over {p.directions} random directions) between {p.samples} samples "
           f"of each row and {p.samples} exact posterior samples; mean ± 1.96 std/√n over {p.problems} problems "
           f"per cell. Lower is better; the exact-posterior row is the noise floor. `unsupported` / `error`: see "
           f"the CSV's message column. NFE: network evaluations per sample (forward + backward).", ""]
    cell_cols = [(d, m) for d in p.dims for m in p.measurement_dims]
    for n_steps in p.steps:
        out += [f"## {n_steps} steps", "",
                "| solver | NFE | " + " | ".join(f"d={d}, d_y={m}" for d, m in cell_cols) + " |",
                "|---|---|" + "---|" * len(cell_cols)]
        solvers = list(REFERENCE_ROWS) + sorted({r["solver"] for r in rows} - set(REFERENCE_ROWS))
        for s in solvers:
            mine = {(r["d"], r["d_y"]): r for r in rows if r["n_steps"] == n_steps and r["solver"] == s}
            if not mine:
                continue
            cells_txt = []
            for key in cell_cols:
                r = mine.get(key)
                if r is None:
                    cells_txt.append("")
                elif r["status"] in ("unsupported", "error"):
                    cells_txt.append(r["status"])
                else:
                    cells_txt.append(_fmt(r["sw_mean"], r["sw_ci"]) + ("" if r["status"] == "ok" else " †"))
            nfe = max(r["nfe_forward"] + r["nfe_backward"] for r in mine.values())
            label = REFERENCE_ROWS.get(s, s)
            out.append(f"| {'*' + label + '*' if s in REFERENCE_ROWS else label} | {nfe if nfe else '-'} | "
                       + " | ".join(cells_txt) + " |")
        out.append("")
    msgs = sorted({(r["solver"], r["status"], r["message"]) for r in rows if r["status"] != "ok" and r["message"]})
    if msgs:
        out += ["Rows that did not run everywhere (first message per solver and status):", ""]
        seen = set()
        for s, st, m in msgs:
            if (s, st) not in seen:
                seen.add((s, st))
                out.append(f"* {s} ({st}): {m}")
        out.append("")
    if summary is not None:
        out += [f"Wall time of the last run: {summary['seconds_this_run']} s on {summary['threads']} thread(s); "
                f"per solver: " + ", ".join(f"{k} {v} s" for k, v in summary["seconds_by_solver_this_run"].items()), ""]
    out += ["† some problems diverged (NaN/inf); they count in n but not in the mean (spec §4).", ""]
    return "\n".join(out)


def metric_card(p: GMMProtocol) -> dict[str, str]:
    grids = {n: cell_schedule(n)[0] for n in p.steps}
    return {
        "metric": f"sliced Wasserstein: mean over {p.directions} random unit directions (normalised Gaussians, one "
                  "set per problem shared by every row) of the 1-D W1 distance between the projected sample sets "
                  "(no square, no root; spec gmm-benchmark.md §4)",
        "samples": f"{p.samples} per row and problem; reference: {p.samples} exact posterior samples (float64)",
        "aggregation": "per (n_steps, d, d_y, row): mean ± 1.96 std/sqrt(n), std with ddof 0, NaN ignored by mean and "
                       "std but counted in n (MCGdiff aggregate_gmm_table.py)",
        "prior": f"25-component grid mixture, spacing {p.spacing}, covariance {p.variance} I, chi-square weights per "
                 "(n_steps, d) from the protocol seed",
        "schedule": "betas linspace(0.02, 1e-4, 999), abar = 1 prepended; adapted grids (t-indexing): "
                    + "; ".join(f"{n} steps: {g}" for n, g in grids.items()),
        "solvers": "every registered solver, unchanged, through solvers.get(name, prior, task='dense'); num_steps = "
                   "n_steps - 1 (every index of the respaced schedule) where the solver has it; per-solver overrides "
                   "in the protocol file",
        "solver_dtype": p.solver_dtype,
    }


