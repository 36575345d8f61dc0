"""`python -m bench run`: batches of images through operator, solver and metrics, into the store.

For every dataset x task x batch of images: load the images, build the operator with per-image
seeds, draw the measurement with per-image noise streams (bench/seeding.py), then for every solver
solve the images whose record is not in the store yet (or is stale: made by other code, see
bench/fingerprint.py), score them, and append one record per image. A failing batch is retried image
by image, so a diverged image gets its own 'diverged' record and its neighbours keep theirs; a batch
that runs out of memory is halved (down to 1) and the smaller batch is kept. A record never depends on
the batch it ran in.

Only the prior of the dataset being run is on the device; the others wait on the CPU.

Sharding: under `torchrun` (RANK / WORLD_SIZE in the environment) rank r takes images r, r+W, ...
and writes its own records file; no process group is needed because images are independent.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import operators
import solvers
from bench import data, seeding, tuning
from bench.errors import BenchError
from bench.fingerprint import Fingerprint, fingerprint
from bench.memory import PeakMemory, is_out_of_memory, release_memory
from bench.prior_loading import load_prior, missing_checkpoint, prior_identity
from bench.results_folder import check_results_dir
from bench.protocol import REPO_ROOT, DatasetSpec, Protocol, SolverSpec, TaskSpec
from bench.store import RERUN_CHOICES, Store, load_fingerprints, load_records, record_key, writer_name
from common.fileio import atomic_write
from solvers.base import SolverDiverged, SolverError, UnsupportedTask
from solvers.oracle import Oracle


# ---------------------------------------------------------------------------------------- helpers
def dist_env() -> tuple[int, int]:
    """(rank, world size) from the torchrun environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> str:
    """`git:<describe>`, with "-dirty" only when code (not results/) differs from the commit; else the
    package version. The exact code behind each record is its fingerprint (bench/fingerprint.py)."""
    described = _git("describe", "--always", "--tags")
    if described:
        dirty = _git("status", "--porcelain", "--", ".", ":(exclude)results")
        return f"git:{described}" + ("-dirty" if dirty else "")
    try:
        from importlib.metadata import version
        return "restorebench " + version("restorebench")
    except Exception:  # noqa: BLE001 - not installed
        return "unknown"


def _canon(obj: Any) -> Any:
    """JSON-able canonical form (tensors/arrays by content hash, tuples as lists, sorted keys)."""
    if isinstance(obj, dict):
        return {str(k): _canon(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canon(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().contiguous().numpy()
    if isinstance(obj, np.ndarray):
        if obj.size <= 16:
            return obj.tolist()
        return {"array_sha256": hashlib.sha256(obj.tobytes()).hexdigest(), "shape": list(obj.shape),
                "dtype": str(obj.dtype)}
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def config_hash(config: dict) -> str:
    text = json.dumps(_canon(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_solver(spec: SolverSpec, prior: torch.nn.Module, task: str, dataset: str, smoke: bool,
                 tuned: dict[str, dict] | None = None) -> Any:
    """The solver of a cell. `tuned`: {key: {value, source}} of the tuned layer (bench/tuning.py), applied
    below the smoke and the entry's own overrides; each applied value keeps its "sweep: ..." source."""
    if spec.is_oracle:
        return Oracle(spec.solver_name, prior)
    try:
        overrides = dict(spec.overrides)
        if smoke:
            overrides = {**solvers.base.solver_class(spec.solver_name).smoke, **overrides}
        tuned = {k: v for k, v in (tuned or {}).items() if k not in overrides}
        obj = solvers.get(spec.solver_name, prior, task=task, dataset=dataset,
                          **{k: v["value"] for k, v in tuned.items()}, **overrides)
        obj.sources.update({k: v["source"] for k, v in tuned.items()})
        return obj
    except SolverError as err:
        raise BenchError(f"solver {spec.name!r}: {err}") from None


def default_threads(protocol: Protocol, device: torch.device) -> int | None:
    """CPU threads: $RESTOREBENCH_THREADS, else 1 for small images on CPU (tiny tensors run several
    times faster without intra-op threading: the demo's 64x64 solvers), else torch's default."""
    if os.environ.get("RESTOREBENCH_THREADS"):
        return int(os.environ["RESTOREBENCH_THREADS"])
    if device.type == "cpu" and max(d.image_size for d in protocol.datasets) <= 64:
        return 1
    return None


# ---------------------------------------------------------------------------------------- devices
def apply_speed_flags(speed: dict, device: torch.device) -> None:
    """Process-wide switches of the protocol's `speed:` block (the prior's own switches go to load_prior).

    tf32 off sets both TF32 flags off explicitly (torch's default allows TF32 in cuDNN convolutions);
    deterministic on needs CUBLAS_WORKSPACE_CONFIG before the first cuBLAS call, set here if unset."""
    torch.backends.cuda.matmul.allow_tf32 = bool(speed.get("tf32"))
    torch.backends.cudnn.allow_tf32 = bool(speed.get("tf32"))
    torch.backends.cudnn.benchmark = bool(speed.get("cudnn_benchmark"))
    deterministic = bool(speed.get("deterministic"))
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic)


# ---------------------------------------------------------------------------------------- memory
@contextlib.contextmanager
def _measure(device: torch.device, out: dict):
    """Wall seconds and the peak memory the block added (bench/memory.py: on the GPU above what was
    allocated at its start, i.e. without the prior's weights; on the CPU the growth of the resident set)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    peak = PeakMemory(device)
    t0 = time.perf_counter()
    try:
        with peak:
            yield
    finally:
        out["seconds"] = time.perf_counter() - t0
        out["peak_mem_mb"] = peak.mb


# ---------------------------------------------------------------------------------------- run
@dataclass
class Cell:
    dataset: DatasetSpec
    task: TaskSpec
    solver: SolverSpec
    obj: Any
    config_hash: str
    supported: bool
    fingerprint: Fingerprint
    config: dict


@dataclass
class Selection:
    """What the current protocol and code ask for: (dataset, task, entry) -> (config hash, fingerprint)."""
    cells: dict[tuple[str, str, str], tuple[str, str]]
    problem: str = ""
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # fingerprint -> {file: sha256}


class Runner:
    def __init__(self, protocol: Protocol, results_dir: Path, device: str | torch.device = "cpu",
                 batch_size: int | None = None, limit: int | None = None, rerun: str = "stale",
                 progress: bool | None = None, log: Callable[[str], None] | None = None,
                 threads: int | None = None, retry_errors: bool = False) -> None:
        self.p = protocol
        self.dir = Path(results_dir)
        self.device = torch.device(device)
        self.batch_size = batch_size  # CLI override of every dataset's batch size
        self.limit = limit
        if rerun not in RERUN_CHOICES:
            raise BenchError(f"--rerun {rerun!r}: use one of {', '.join(RERUN_CHOICES)}")
        self.rerun = "errors" if retry_errors and rerun == "stale" else rerun
        self.rank, self.world = dist_env()
        self.progress = sys.stderr.isatty() and self.rank == 0 if progress is None else progress
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.version = code_version()
        self.threads = threads if threads else default_threads(protocol, self.device)
        if self.threads:
            torch.set_num_threads(self.threads)
        self.rng_device = self.device if protocol.rng_device == "run" else torch.device("cpu")
        self._batch_cap: dict[tuple[str, str], int] = {}  # (dataset, entry) -> batch that fit in memory
        self.store: Store | None = None

    def batch_size_for(self, ds: DatasetSpec) -> int:
        return self.batch_size or self.p.batch_size_for(ds)

    # ---------------------------------------------------------------- preflight
    def preflight(self) -> tuple[dict[str, list[data.ImageRef]], dict[str, torch.nn.Module]]:
        """Check every image and prior before any work; one message lists every problem. The priors are
        loaded (and verified) on the CPU; each goes to the device only while its dataset runs."""
        problems, images, priors = [], {}, {}
        for ds in self.p.datasets:
            try:
                images[ds.name] = data.resolve(ds, self.limit)
            except BenchError as err:
                problems.append(str(err))
        missing = {msg for msg in (missing_checkpoint(ds.prior) for ds in self.p.datasets) if msg}
        if missing:
            problems.extend(sorted(missing))
        if self.p.set_metrics:  # FID/KID are computed later from the stored outputs: their weights first
            from bench import fid
            try:
                fid.verify_weights(fid.weights_path())
            except fid.SetMetricError as err:
                problems.append(str(err))
        if not problems:
            priors = self._load_priors(problems)
        if problems:
            hint = ("\nDownload the checkpoints with `make checkpoints` (python -m bench checkpoints)."
                    if missing else "")
            sep = " " if len(problems) == 1 and "\n" not in problems[0] and not hint else "\n"
            raise BenchError("cannot start, nothing was run:" + sep + "\n".join(problems) + hint)
        return images, priors

    def _load_priors(self, problems: list[str]) -> dict[str, torch.nn.Module]:
        """Every dataset's prior, loaded on the CPU; what fails is appended to `problems`."""
        priors = {}
        for ds in self.p.datasets:
            try:
                priors[ds.name] = load_prior(ds.prior, ds.image_size, "cpu", speed=self.p.speed, unet=ds.unet)
            except BenchError as err:
                problems.append(str(err))
            except (FileNotFoundError, ValueError, RuntimeError, OSError, ImportError) as err:
                problems.append(f"prior {ds.prior!r} for dataset {ds.name!r}: {err}")
        return priors

    def metric_object(self):
        try:
            from bench.metrics import Metrics
        except ImportError as err:
            raise BenchError(f"bench.metrics is not available: {err}") from None
        try:
            return Metrics(**self.p.metrics)
        except Exception as err:  # noqa: BLE001 - unknown variant, missing LPIPS weights
            raise BenchError(f"protocol {self.p.name}: metrics {self.p.metrics}: {err}") from None

    # ---------------------------------------------------------------- cells
    def cells(self, ds: DatasetSpec, task: TaskSpec, prior: torch.nn.Module, card: dict) -> list[Cell]:
        shape = (3, ds.image_size, ds.image_size)
        try:
            A_ref = operators.get(task.name, image_shape=shape, seeds=[0], sigma_y=task.sigma_y,
                                  shared_params=task.shared_params, **task.params)
        except operators.OperatorError as err:
            raise BenchError(f"protocol {self.p.name}: task {task.name!r}: {err}") from None
        out = []
        for s in self.p.solvers:
            tuned = {} if self.p.tuning != "tuned" or s.is_oracle else \
                tuning.tuned_values(self.p.name, s.name, ds.name, task.name)
            obj = build_solver(s, prior, task.name, ds.name, self.p.smoke, tuned)
            external = obj.external_models() if hasattr(obj, "external_models") else {}
            config = {
                "seed": self.p.seed, "smoke": self.p.smoke,
                "dataset": {"name": ds.name, "prior": ds.prior, "image_size": ds.image_size,
                            "manifest": ds.manifest},
                "task": {"name": task.name, "params": task.params, "shared_params": task.shared_params,
                         "sigma_y": task.sigma_y},
                "operator": A_ref.describe(),
                "solver": {"name": s.solver_name, "params": obj.describe().get("params", {}),
                           "overrides": dict(s.overrides), "external_models": external},
                "prior": prior_identity(prior, ds.prior, speed=self.p.speed, unet=ds.unet),
                "metrics": card,
                "speed": dict(self.p.speed),
                "rng_device": self.p.rng_device,
            }
            if self.p.tuning != "published":  # published configurations keep their hash
                config["tuning"] = self.p.tuning
                config["solver"]["tuned"] = {k: v["source"] for k, v in sorted(tuned.items())
                                             if obj.sources.get(k) == v["source"]}
            h = config_hash(config)
            fp = fingerprint(obj, prior, A_ref)
            out.append(Cell(ds, task, s, obj, h, bool(obj.supports(A_ref)), fp, _canon(config)))
        return out

    def selection(self) -> Selection:
        """The (config hash, fingerprint) the current protocol and code give every table cell (what `bench
        table` shows by default); loads the priors, makes no solve."""
        problems = [m for m in (missing_checkpoint(ds.prior) for ds in self.p.datasets) if m]
        priors = {} if problems else self._load_priors(problems)
        try:
            card = self.metric_object().card()
        except BenchError as err:
            problems.append(str(err))
        if problems:
            return Selection({}, " ".join(problems[0].split())[:300])
        out, files = {}, {}
        for ds in self.p.datasets:
            for task in self.p.tasks:
                for c in self.cells(ds, task, priors[ds.name], card):
                    out[(ds.name, task.name, c.solver.name)] = (c.config_hash, c.fingerprint.digest)
                    files[c.fingerprint.digest] = c.fingerprint.files
        return Selection(out, files=files)

    # ---------------------------------------------------------------- main loop
    def run(self) -> dict[str, int]:
        apply_speed_flags(self.p.speed, self.device)
        images, priors = self.preflight()
        metrics = self.metric_object()
        card = metrics.card()
        check_results_dir(self.dir)
        self.store = Store(self.dir, writer=writer_name(self.rank))
        stored = _index(load_records(self.dir, all_versions=True))
        stored_fps = load_fingerprints(self.dir)
        counts = {"ok": 0, "diverged": 0, "unsupported": 0, "error": 0, "skipped": 0}

        plan = []  # (ds, task, cells, my images, todo keys)
        stale: dict[tuple[str, str], int] = {}
        for ds in self.p.datasets:
            refs = images[ds.name]
            mine = [(i, r) for i, r in enumerate(refs) if i % self.world == self.rank]
            for task in self.p.tasks:
                cells = self.cells(ds, task, priors[ds.name], card)
                todo = set()
                for c in cells:
                    for _, r in mine:
                        why = self._needs_run(c, r, stored, stored_fps)
                        if why is None:
                            counts["skipped"] += 1
                            continue
                        todo.add(self._key(c, r))
                        if why.startswith("stale"):
                            stale[(c.solver.name, why)] = stale.get((c.solver.name, why), 0) + 1
                plan.append((ds, task, cells, mine, todo))
        for (entry, why), n in sorted(stale.items()):
            self.log(f"{n} records of {entry} stale: {why[len('stale: '):]}; recomputing them")
        todo_total = sum(len(t) for *_, t in plan)
        self.log(f"[rank {self.rank}] {todo_total} records to compute, {counts['skipped']} stored and current "
                 f"(device {self.device}, random streams on {self.rng_device})")
        if todo_total and self.rank == 0:
            self.log(self.projection(plan, priors))

        with _progress(self.progress) as bar:
            overall = bar.add_task("all", total=todo_total) if bar else None
            for ds in self.p.datasets:
                ds_plan = [entry for entry in plan if entry[0] is ds]
                if not any(t for *_, t in ds_plan):
                    continue
                prior = priors[ds.name].to(self.device)  # only this dataset's prior is on the device
                for _, task, cells, mine, todo in ds_plan:
                    n_todo = len(todo)  # `todo` is emptied as records are written
                    sub = bar.add_task(f"{ds.name} / {task.name}", total=n_todo) if bar and n_todo else None
                    t_cell = time.perf_counter()
                    size = self.batch_size_for(ds)
                    for start in range(0, len(mine), size):
                        batch = mine[start:start + size]
                        n = self._run_batch(ds, task, cells, batch, prior, metrics, todo, counts)
                        if bar and n:
                            bar.advance(overall, n)
                            bar.advance(sub, n)
                    if n_todo and not bar:
                        self.log(f"[rank {self.rank}] {ds.name} / {task.name}: {n_todo} records "
                                 f"in {time.perf_counter() - t_cell:.1f} s")
                if self.device.type != "cpu":
                    priors[ds.name] = prior.to("cpu")
                    del prior
                    release_memory(self.device)
        return counts

    def projection(self, plan: list, priors: dict[str, torch.nn.Module]) -> str:
        """The projected network time of what this run will compute (bench/plan.py: a short measurement of
        each dataset's prior at its batch size, x each solver's budget, x the records to compute; on W
        processes, each takes 1/W). Never stops the run: a failed measurement is said in the line."""
        from bench import plan as planning
        seconds = 0.0
        for ds in self.p.datasets:
            todo = {(task.name, entry): n for d, task, cells, _, keys in plan if d is ds
                    for entry, n in _count_by_entry(cells, keys).items() if n}
            if not todo:
                continue
            prior = priors[ds.name].to(self.device)
            try:
                timing = planning.measure_at(prior, self.batch_size_for(ds), self.device,
                                             quick=self.device.type == "cpu", repeats=1)
            except Exception as err:  # noqa: BLE001 - the projection is informative only
                return f"projected time: not measured ({type(err).__name__}: {str(err)[:120]})"
            finally:
                if self.device.type != "cpu":
                    priors[ds.name] = prior.to("cpu")
                    release_memory(self.device)
            for d, task, cells, _, keys in plan:
                if d is not ds:
                    continue
                for c in cells:
                    n = todo.get((task.name, c.solver.name), 0)
                    budget = c.obj.budget() if n and c.supported and hasattr(c.obj, "budget") else None
                    if budget:
                        seconds += n * planning.seconds_per_image(budget["nfe_forward"], budget["nfe_backward"],
                                                                  timing.t_forward_per_image,
                                                                  timing.t_forward_backward_per_image)
        hours = seconds / 3600 / self.world
        return (f"projected network time on {self.device}: {hours:.3g} h per process "
                f"(python -m bench plan for the breakdown)")

    def _needs_run(self, c: Cell, ref: data.ImageRef, stored: dict, stored_fps: dict) -> str | None:
        """None when a current record exists; else why the record is (re)computed."""
        versions = stored.get(self._key(c, ref), {})
        current = versions.get(c.fingerprint.digest)
        if current is not None:
            if self.rerun == "all" or (self.rerun == "errors" and current["status"] == "error"):
                return "rerun"
            return None
        if versions:  # records of this configuration made by other code
            changed: set[str] = set()
            for fp in versions:
                files = stored_fps.get(fp)
                changed.update(c.fingerprint.changed_files(files) if files is not None else ["(unknown files)"])
            shown = sorted(changed)
            text = ", ".join(shown[:4]) + (f" and {len(shown) - 4} more" if len(shown) > 4 else "")
            return f"stale: {text} changed"
        return "new"

    def _key(self, cell: Cell, ref: data.ImageRef) -> tuple:
        return record_key({"dataset": ref.dataset, "image_id": ref.id, "task": cell.task.name,
                           "solver": cell.solver.name, "seed": self.p.seed, "config_hash": cell.config_hash,
                           "image_sha256": ref.sha256})

    def _run_batch(self, ds: DatasetSpec, task: TaskSpec, cells: list[Cell], batch: list[tuple[int, data.ImageRef]],
                   prior: torch.nn.Module, metrics: Any, todo_keys: set, counts: dict) -> int:
        todo = {c.solver.name: [j for j, (_, r) in enumerate(batch) if self._key(c, r) in todo_keys] for c in cells}
        if not any(todo.values()):
            return 0
        refs = [r for _, r in batch]
        n_written = 0
        # unsupported cells need no images
        for c in cells:
            if todo[c.solver.name] and not c.supported:
                recs = [self._record(c, refs[j], "unsupported", f"{c.solver.name} does not support {task.name}",
                                     None, {}) for j in todo[c.solver.name]]
                self._write(c, recs)
                todo_keys.difference_update(self._key(c, refs[j]) for j in todo[c.solver.name])
                n_written += len(recs)
                counts["unsupported"] += len(recs)
                todo[c.solver.name] = []
        if not any(todo.values()):
            return n_written
        x = data.load_batch(refs, ds.image_size).to(self.device)
        A = operators.get(task.name, image_shape=tuple(x.shape[1:]), sigma_y=task.sigma_y,
                          shared_params=task.shared_params,
                          seeds=[seeding.operator_seed(self.p.seed, task.name, r.key, task.shared_params) for r in refs],
                          **task.params)
        with torch.no_grad():
            y = A.measure(x, [seeding.noise_generator(self.p.seed, task.name, r.key, device=self.rng_device)
                              for r in refs])
        grid_idx = [j for j, (i, _) in enumerate(batch) if i < self.p.grid_images]
        if self.p.set_metrics:  # FID/KID need every ground truth (bench/fid.py)
            from bench.fid import gt_dir, save_png
            for r, xi in zip(refs, x):
                save_png(gt_dir(self.dir, ds.name) / f"{r.id}.png", data.to_uint8(xi))
        if grid_idx:
            self._save_images(ds, task, "_gt", [refs[j] for j in grid_idx], x[grid_idx])
            self._save_images(ds, task, "_y", [refs[j] for j in grid_idx], _measurement_view(A, y, x)[grid_idx])
        for c in cells:
            idx = todo[c.solver.name]
            if not idx:
                continue
            results = self._solve(c, prior, A, y, refs, idx)
            ok = [k for k, res in enumerate(results) if res[0] == "ok"]
            scores: dict[int, dict] = {}
            if ok:  # metrics are per image; one call for the images that succeeded
                values = metrics(torch.cat([results[k][2] for k in ok]), x[[idx[k] for k in ok]])
                scores = {k: {m: float(v[n]) for m, v in values.items()} for n, k in enumerate(ok)}
            recs = []
            for k, (j, (status, message, x_hat, stats)) in enumerate(zip(idx, results)):
                if status == "ok" and batch[j][0] < self.p.grid_images:
                    self._save_images(ds, task, c.solver.name, [refs[j]], x_hat)
                if status == "ok" and self.p.set_metrics:  # every output, by config hash (bench/fid.py)
                    from bench.fid import output_dir, save_png
                    save_png(output_dir(self.dir, ds.name, task.name, c.solver.name, c.config_hash)
                             / f"{refs[j].id}.png", data.to_uint8(x_hat[0]))
                recs.append(self._record(c, refs[j], status, message, scores.get(k), stats))
                counts[status] += 1
            self._write(c, recs)
            todo_keys.difference_update(self._key(c, refs[j]) for j in idx)
            n_written += len(recs)
        return n_written

    def _write(self, c: Cell, recs: list[dict]) -> None:
        assert self.store is not None
        self.store.add_config(c.config_hash, c.config)
        self.store.add_fingerprint(c.fingerprint.digest, c.fingerprint.files)
        self.store.append(recs)

    # ---------------------------------------------------------------- solving with back-off
    def _solve(self, c: Cell, prior: torch.nn.Module, A: operators.Operator, y: torch.Tensor,
               refs: list[data.ImageRef], idx: list[int]) -> list[tuple[str, str, torch.Tensor | None, dict]]:
        """Solve images idx of the batch, in chunks of at most the batch that fitted in memory so far.

        Out of memory: the chunk is halved (down to 1) and retried after the failed attempt's tensors are
        released (the retry happens outside the `except` block, so the traceback no longer holds them);
        the smaller batch is kept for the rest of the run of this (dataset, solver). Any other failure of a
        chunk of several images: each image is retried alone, so each gets its own status. Image i's result
        never depends on its chunk (per-image streams), so the records equal a batch-1 run's."""
        cap_key = (c.dataset.name, c.solver.name)
        cap = self._batch_cap.get(cap_key, len(idx))
        queue = [idx[i:i + cap] for i in range(0, len(idx), cap)]
        done: dict[int, tuple[str, str, torch.Tensor | None, dict]] = {}
        while queue:
            chunk = queue.pop(0)
            outcome = self._attempt(c, prior, A, y, refs, chunk)
            if outcome[0] == "ok":
                done.update(zip(chunk, outcome[1]))
                continue
            kind, message, status = outcome
            if kind == "oom":
                release_memory(self.device)
                if len(chunk) > 1:
                    half = (len(chunk) + 1) // 2
                    self._batch_cap[cap_key] = min(self._batch_cap.get(cap_key, half), half)
                    self.log(f"out of memory at batch {len(chunk)} ({c.dataset.name} / {c.task.name} / "
                             f"{c.solver.name}); retrying at batch {half}")
                    queue[:0] = [chunk[:half], chunk[half:]]
                    continue
                message = (f"out of memory at batch 1 on {self.device}: {message}; use a GPU with more memory, "
                           f"speed: {{checkpointing: true}} or precision: bf16")[:500]
            if len(chunk) > 1:
                queue[:0] = [[j] for j in chunk]
                continue
            done[chunk[0]] = (status, message, None, {})
        return [done[j] for j in idx]

    def _attempt(self, c: Cell, prior: torch.nn.Module, A: operators.Operator, y: torch.Tensor,
                 refs: list[data.ImageRef], chunk: list[int]) -> tuple:
        """One solve of `chunk`: ("ok", per-image results) or (kind, message, status) with kind oom|fail.
        Nothing of a failed attempt survives this function (no exception object, no traceback)."""
        gens = [seeding.solver_generator(self.p.seed, c.task.name, refs[j].key, c.solver.solver_name,
                                         device=self.rng_device) for j in chunk]
        A_sub = A.select(chunk) if len(chunk) != y.shape[0] else A
        stats: dict = {}
        failure = None
        try:
            with _measure(self.device, stats):
                x_hat = c.obj.solve(y[chunk], A_sub, generator=gens)
        except KeyboardInterrupt:
            raise
        except UnsupportedTask as err:
            failure = ("fail", str(err), "unsupported")
        except Exception as err:  # noqa: BLE001 - a failing solver becomes a failed record
            if is_out_of_memory(err):
                failure = ("oom", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", "error")
            else:
                status = "diverged" if isinstance(err, SolverDiverged) else "error"
                failure = ("fail", f"{type(err).__name__}: {err}"[:500], status)
        if failure is not None:
            return failure
        nfe = getattr(prior, "nfe", None)
        n = len(chunk)
        per = {"nfe_forward": (nfe.forward / n) if nfe else 0, "nfe_backward": (nfe.backward / n) if nfe else 0,
               "seconds": stats["seconds"] / n, "peak_mem_mb": stats["peak_mem_mb"], "batch_size": n}
        finite = torch.isfinite(x_hat.flatten(1)).all(1).tolist()  # one read-back per batch, after the solve
        return ("ok", [("ok", "", x_hat[k:k + 1], per) if finite[k] else ("diverged", "non-finite output", None, per)
                       for k in range(n)])

    def _record(self, c: Cell, ref: data.ImageRef, status: str, message: str, scores: dict | None,
                stats: dict) -> dict:
        scores = scores or {}
        return {"dataset": ref.dataset, "image_id": ref.id, "task": c.task.name, "solver": c.solver.name,
                "solver_class": c.solver.solver_name,
                "seed": self.p.seed, "config_hash": c.config_hash, "fingerprint": c.fingerprint.digest,
                "image_sha256": ref.sha256, "status": status, "message": message,
                "psnr": scores.get("psnr"), "ssim": scores.get("ssim"), "lpips": scores.get("lpips"),
                "nfe_forward": stats.get("nfe_forward"), "nfe_backward": stats.get("nfe_backward"),
                "seconds": stats.get("seconds"), "peak_mem_mb": stats.get("peak_mem_mb"),
                "batch_size": stats.get("batch_size"), "device": str(self.device), "code_version": self.version,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def _save_images(self, ds: DatasetSpec, task: TaskSpec, column: str, refs: list[data.ImageRef],
                     xs: torch.Tensor) -> None:
        folder = self.dir / "images" / ds.name / task.name / column
        folder.mkdir(parents=True, exist_ok=True)
        for r, xi in zip(refs, xs):
            image = Image.fromarray(data.to_uint8(xi))
            atomic_write(folder / f"{r.id}.png", lambda tmp: image.save(tmp, format="PNG"))


def _count_by_entry(cells: list[Cell], keys: set) -> dict[str, int]:
    """Records to compute per table entry of one (dataset, task)."""
    out: dict[str, int] = {}
    for k in keys:
        out[k[3]] = out.get(k[3], 0) + 1
    return {c.solver.name: out.get(c.solver.name, 0) for c in cells}


def _index(records: list[dict]) -> dict[tuple, dict[str, dict]]:
    """key -> fingerprint -> record."""
    out: dict[tuple, dict[str, dict]] = {}
    for r in records:
        out.setdefault(record_key(r), {})[r.get("fingerprint") or ""] = r
    return out


def _measurement_view(A: operators.Operator, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y shown as an image of x's size: as is, resized (nearest; SR), A^T y (linear), else grey."""
    if y.shape == x.shape:
        return y
    if y.ndim == 4 and y.shape[1] == x.shape[1]:
        return F.interpolate(y, size=x.shape[-2:], mode="nearest")
    if A.is_linear:
        with contextlib.suppress(Exception):
            return A.adjoint(y)
    return torch.zeros_like(x)


@contextlib.contextmanager
def _progress(enabled: bool):
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn()) as bar:
        yield bar
