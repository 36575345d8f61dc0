"""`python -m bench run`: batches of images through operator, solver and metrics, into the store.

For every dataset x task x batch of images: load the images, build the operator with per-image
seeds, draw the measurement with per-image noise streams (bench/seeding.py), then for every solver
solve the images whose record is not in the store yet, score them, and append one record per image.
A failing batch is retried image by image, so a diverged image gets its own 'diverged' record and
its neighbours keep theirs (and a record never depends on the batch it ran in).

Sharding: under `torchrun` (RANK / WORLD_SIZE in the environment) rank r takes images r, r+W, ...
and writes its own records file; no process group is needed because images are independent.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import operators
import solvers
from bench import data, seeding
from bench.fileio import atomic_write
from bench.errors import BenchError
from bench.protocol import REPO_ROOT, DatasetSpec, Protocol, SolverSpec, TaskSpec
from bench.store import Store, record_key
from solvers.base import SolverDiverged, SolverError, UnsupportedTask


# ---------------------------------------------------------------------------------------- helpers
def dist_env() -> tuple[int, int]:
    """(rank, world size) from the torchrun environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def code_version() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return "git:" + out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
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


def load_prior(name: str, image_size: int, device: str) -> torch.nn.Module:
    """'gaussian' -> the exact embedded Gaussian prior; 'module:function' -> function(image_size=...);
    anything else -> priors.registry.load (a registry name or a checkpoint path)."""
    if name == "gaussian":
        from priors.gaussian import embedded
        prior = embedded(image_size=image_size)
    elif ":" in name:
        module, fn = name.split(":", 1)
        prior = getattr(importlib.import_module(module), fn)(image_size=image_size)
    else:
        from priors import registry
        prior = registry.load(name, device=device)
    prior = prior.to(device)
    want = (3, image_size, image_size)
    if tuple(prior.image_shape) != want:
        raise BenchError(f"prior {name!r} is for images {tuple(prior.image_shape)}, the protocol asks for {want}; "
                         f"set image_size: {prior.image_shape[-1]} in the protocol")
    return prior


def missing_checkpoint(name: str) -> str | None:
    """For a registered checkpoint name: None when its file is in place, else the message naming it."""
    try:
        from priors import registry
    except ImportError:
        return None
    if name not in getattr(registry, "SPECS", {}):
        return None
    try:
        registry.find_checkpoint(registry.SPECS[name])
    except registry.CheckpointError as err:
        return str(err)
    return None


def prior_identity(prior: torch.nn.Module, name: str) -> dict:
    """What decides the prior: checkpoint file and sha256 (registered ADM), or the exact prior's parameters."""
    ident = {"name": name, "class": f"{type(prior).__module__}.{type(prior).__qualname__}",
             "image_shape": list(prior.image_shape)}
    params = getattr(prior, "parameters_dict", None)
    if callable(params):
        ident["parameters"] = params()
    try:
        from priors import registry
        if name in registry.SPECS:
            path = registry.find_checkpoint(registry.SPECS[name])
            ident["checkpoint"] = {"file": path.name, "sha256": registry.cached_sha256(path)}
    except ImportError:
        pass
    return ident


class Oracle:
    """The exact posterior mean / an exact posterior sample, for priors that have them (no NFE)."""

    def __init__(self, name: str, prior: torch.nn.Module) -> None:
        self.name, self.prior = name, prior
        self.method = {"oracle_mean": "posterior_mean", "oracle_sample": "posterior_sample"}[name]
        self.params: dict[str, Any] = {}

    def supports(self, A: operators.Operator) -> bool:
        return callable(getattr(self.prior, self.method, None))

    def describe(self) -> dict:
        return {"solver": self.name, "params": {}}

    def solve(self, y: torch.Tensor, A: operators.Operator, generator: Sequence[torch.Generator]) -> torch.Tensor:
        if not self.supports(A):
            raise UnsupportedTask(f"prior {getattr(self.prior, 'name', '?')!r} has no exact {self.method}")
        self.prior.reset_counters()
        out = []
        with torch.no_grad():  # one image at a time: a batched iterative solve (CG) stops when the
            for i in range(y.shape[0]):  # slowest image converges, which would couple the images
                A_i = A.select([i])
                if self.name == "oracle_mean":
                    out.append(self.prior.posterior_mean(y[i:i + 1], A_i))
                else:
                    out.append(self.prior.posterior_sample(y[i:i + 1], A_i, [generator[i]]))
        return torch.cat(out).clamp(-1, 1)


def build_solver(spec: SolverSpec, prior: torch.nn.Module, task: str, dataset: str, smoke: bool) -> Any:
    if spec.is_oracle:
        return Oracle(spec.name, prior)
    try:
        overrides = dict(spec.overrides)
        if smoke:
            probe = solvers.get(spec.name, prior, task=task, dataset=dataset)
            overrides = {**type(probe).smoke, **overrides}
        return solvers.get(spec.name, prior, task=task, dataset=dataset, **overrides)
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


# ---------------------------------------------------------------------------------------- memory
def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _measure(device: torch.device, out: dict):
    """Wall seconds and peak memory of the block.

    GPU: torch.cuda.max_memory_allocated. CPU: the process's peak resident memory during the block
    above its resident memory at the start (VmHWM after resetting it, minus VmRSS), so the figure is
    what the batch added, not the libraries already loaded; 0 where /proc is unavailable."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    cpu_peak = (not cuda) and _reset_rss_peak()
    rss0 = _proc_status_mb("VmRSS") if cpu_peak else None
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if cuda:
            torch.cuda.synchronize(device)
        out["seconds"] = time.perf_counter() - t0
        if cuda:
            out["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        else:
            hwm = _proc_status_mb("VmHWM") if cpu_peak else None
            out["peak_mem_mb"] = max(0.0, hwm - rss0) if hwm is not None and rss0 is not None else 0.0


# ---------------------------------------------------------------------------------------- run
@dataclass
class Cell:
    dataset: DatasetSpec
    task: TaskSpec
    solver: SolverSpec
    obj: Any
    config_hash: str
    supported: bool


class Runner:
    def __init__(self, protocol: Protocol, results_dir: Path, device: str = "cpu", batch_size: int | None = None,
                 limit: int | None = None, retry_errors: bool = False, progress: bool | None = None,
                 log: Callable[[str], None] | None = None, threads: int | None = None) -> None:
        self.p = protocol
        self.dir = Path(results_dir)
        self.device = torch.device(device)
        self.batch_size = batch_size or protocol.batch_size
        self.limit = limit
        self.retry_errors = retry_errors
        self.rank, self.world = dist_env()
        self.progress = sys.stderr.isatty() and self.rank == 0 if progress is None else progress
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.version = code_version()
        self.threads = threads if threads else default_threads(protocol, self.device)
        if self.threads:
            torch.set_num_threads(self.threads)

    # ---------------------------------------------------------------- preflight
    def preflight(self) -> tuple[dict[str, list[data.ImageRef]], dict[str, torch.nn.Module]]:
        """Check every image and prior before any work; one message lists every problem."""
        problems, images, priors = [], {}, {}
        for ds in self.p.datasets:
            try:
                images[ds.name] = data.resolve(ds, self.limit)
            except BenchError as err:
                problems.append(str(err))
        missing = {msg for msg in (missing_checkpoint(ds.prior) for ds in self.p.datasets) if msg}
        if missing:
            problems.extend(sorted(missing))
        for ds in self.p.datasets if not problems else []:
            try:
                priors[ds.name] = load_prior(ds.prior, ds.image_size, str(self.device))
            except BenchError as err:
                problems.append(str(err))
            except (FileNotFoundError, ValueError, RuntimeError, OSError, ImportError) as err:
                problems.append(f"prior {ds.prior!r} for dataset {ds.name!r}: {err}")
        if problems:
            needs_ckpt = any("checkpoint" in p for p in problems)
            hint = "\nDownload the checkpoints with `make checkpoints` (python -m bench checkpoints)." if needs_ckpt else ""
            raise BenchError("cannot start, nothing was run:\n" + "\n".join(problems) + hint)
        return images, priors

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
            obj = build_solver(s, prior, task.name, ds.name, self.p.smoke)
            config = {
                "seed": self.p.seed, "smoke": self.p.smoke,
                "dataset": {"name": ds.name, "prior": ds.prior, "image_size": ds.image_size,
                            "manifest": ds.manifest},
                "task": {"name": task.name, "params": task.params, "shared_params": task.shared_params,
                         "sigma_y": task.sigma_y},
                "operator": A_ref.describe(),
                "solver": {"name": s.name, "params": obj.describe().get("params", {})},
                "prior": prior_identity(prior, ds.prior),
                "metrics": card,
            }
            h = config_hash(config)
            out.append(Cell(ds, task, s, obj, h, bool(obj.supports(A_ref))))
            self.store.add_config(h, _canon(config))
        return out

    # ---------------------------------------------------------------- main loop
    def run(self) -> dict[str, int]:
        images, priors = self.preflight()
        metrics = self.metric_object()
        card = metrics.card()
        self.store = Store(self.dir, writer=f"rank{self.rank}")
        done = self.store.done_keys(retry_errors=self.retry_errors)
        counts = {"ok": 0, "diverged": 0, "unsupported": 0, "error": 0, "skipped": 0}

        plan = []  # (ds, task, cells, my images)
        for ds in self.p.datasets:
            refs = images[ds.name]
            mine = [(i, r) for i, r in enumerate(refs) if i % self.world == self.rank]
            for task in self.p.tasks:
                cells = self.cells(ds, task, priors[ds.name], card)
                plan.append((ds, task, cells, mine))
        todo_total = sum(1 for ds, task, cells, mine in plan for c in cells for _, r in mine
                         if self._key(c, r) not in done)
        counts["skipped"] = sum(len(cells) * len(mine) for _, _, cells, mine in plan) - todo_total

        with _progress(self.progress) as bar:
            overall = bar.add_task("all", total=todo_total) if bar else None
            for ds, task, cells, mine in plan:
                cell_todo = sum(1 for c in cells for _, r in mine if self._key(c, r) not in done)
                sub = bar.add_task(f"{ds.name} / {task.name}", total=cell_todo) if bar and cell_todo else None
                t_cell = time.perf_counter()
                for start in range(0, len(mine), self.batch_size):
                    batch = mine[start:start + self.batch_size]
                    n = self._run_batch(ds, task, cells, batch, priors[ds.name], metrics, done, counts)
                    if bar and n:
                        bar.advance(overall, n)
                        bar.advance(sub, n)
                if cell_todo and not bar:
                    self.log(f"[rank {self.rank}] {ds.name} / {task.name}: {cell_todo} records "
                             f"in {time.perf_counter() - t_cell:.1f} s")
        return counts

    def _key(self, cell: Cell, ref: data.ImageRef) -> tuple:
        return record_key({"dataset": ref.dataset, "image_id": ref.id, "task": cell.task.name,
                           "solver": cell.solver.name, "seed": self.p.seed, "config_hash": cell.config_hash,
                           "image_sha256": ref.sha256})

    def _run_batch(self, ds: DatasetSpec, task: TaskSpec, cells: list[Cell], batch: list[tuple[int, data.ImageRef]],
                   prior: torch.nn.Module, metrics: Any, done: set, counts: dict) -> int:
        todo = {c.solver.name: [j for j, (_, r) in enumerate(batch) if self._key(c, r) not in done] for c in cells}
        if not any(todo.values()):
            return 0
        refs = [r for _, r in batch]
        n_written = 0
        # unsupported cells need no images
        for c in cells:
            if todo[c.solver.name] and not c.supported:
                recs = [self._record(c, refs[j], "unsupported", f"{c.solver.name} does not support {task.name}",
                                     None, None, {}, len(todo[c.solver.name])) for j in todo[c.solver.name]]
                self.store.append(recs)
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
            y = A.measure(x, [seeding.noise_generator(self.p.seed, task.name, r.key) for r in refs])
        grid_idx = [j for j, (i, _) in enumerate(batch) if i < self.p.grid_images]
        if grid_idx:
            self._save_images(ds, task, "_gt", [refs[j] for j in grid_idx], x[grid_idx])
            self._save_images(ds, task, "_y", [refs[j] for j in grid_idx], _measurement_view(A, y, x)[grid_idx])
        for c in cells:
            idx = todo[c.solver.name]
            if not idx:
                continue
            results = self._solve(c, prior, A, x, y, refs, idx)
            ok = [k for k, res in enumerate(results) if res[0] == "ok"]
            scores: dict[int, dict] = {}
            if ok:  # metrics are per image; one call for the images that succeeded
                values = metrics(torch.cat([results[k][2] for k in ok]), x[[idx[k] for k in ok]])
                scores = {k: {m: float(v[n]) for m, v in values.items()} for n, k in enumerate(ok)}
            recs = []
            for k, (j, (status, message, x_hat, stats)) in enumerate(zip(idx, results)):
                if status == "ok" and batch[j][0] < self.p.grid_images:
                    self._save_images(ds, task, c.solver.name, [refs[j]], x_hat)
                recs.append(self._record(c, refs[j], status, message, scores.get(k), x_hat, stats, len(idx)))
                counts[status] += 1
            self.store.append(recs)
            done.update(self._key(c, refs[j]) for j in idx)
            n_written += len(recs)
        return n_written

    def _solve(self, c: Cell, prior: torch.nn.Module, A: operators.Operator, x: torch.Tensor, y: torch.Tensor,
               refs: list[data.ImageRef], idx: list[int]) -> list[tuple[str, str, torch.Tensor | None, dict]]:
        """Solve images idx of the batch; on failure retry one by one so each image gets its own status."""
        gens = [seeding.solver_generator(self.p.seed, c.task.name, refs[j].key, c.solver.name) for j in idx]
        A_sub = A.select(idx) if len(idx) != y.shape[0] else A
        stats: dict = {}
        try:
            with _measure(self.device, stats):
                x_hat = c.obj.solve(y[idx], A_sub, generator=gens)
            nfe = getattr(prior, "nfe", None)
            per = {"nfe_forward": (nfe.forward / len(idx)) if nfe else 0,
                   "nfe_backward": (nfe.backward / len(idx)) if nfe else 0,
                   "seconds": stats["seconds"] / len(idx), "peak_mem_mb": stats["peak_mem_mb"]}
            out = []
            for k in range(len(idx)):
                xk = x_hat[k:k + 1]
                if torch.isfinite(xk).all():
                    out.append(("ok", "", xk, per))
                else:
                    out.append(("diverged", "non-finite output", None, per))
            return out
        except KeyboardInterrupt:
            raise
        except UnsupportedTask as err:
            return [("unsupported", str(err), None, {})] * len(idx)
        except Exception as err:  # noqa: BLE001 - a failing solver becomes a failed record
            if len(idx) > 1:
                return [r for j in idx for r in self._solve(c, prior, A, x, y, refs, [j])]
            status = "diverged" if isinstance(err, SolverDiverged) else "error"
            return [(status, f"{type(err).__name__}: {err}"[:500], None, stats)]

    def _record(self, c: Cell, ref: data.ImageRef, status: str, message: str, scores: dict | None,
                x_hat: Any, stats: dict, batch_size: int) -> dict:
        scores = scores or {}
        return {"dataset": ref.dataset, "image_id": ref.id, "task": c.task.name, "solver": c.solver.name,
                "seed": self.p.seed, "config_hash": c.config_hash, "image_sha256": ref.sha256,
                "status": status, "message": message,
                "psnr": scores.get("psnr"), "ssim": scores.get("ssim"), "lpips": scores.get("lpips"),
                "nfe_forward": stats.get("nfe_forward"), "nfe_backward": stats.get("nfe_backward"),
                "seconds": stats.get("seconds"), "peak_mem_mb": stats.get("peak_mem_mb"),
                "batch_size": batch_size, "device": str(self.device), "code_version": self.version,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def _save_images(self, ds: DatasetSpec, task: TaskSpec, column: str, refs: list[data.ImageRef],
                     xs: torch.Tensor) -> None:
        folder = self.dir / "images" / ds.name / task.name / column
        folder.mkdir(parents=True, exist_ok=True)
        for r, xi in zip(refs, xs):
            image = Image.fromarray(data.to_uint8(xi))
            atomic_write(folder / f"{r.id}.png", lambda tmp: image.save(tmp, format="PNG"))


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
