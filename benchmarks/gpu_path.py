"""What the GPU path costs, measured on this CPU (issue 11, "Measure"): `python -m benchmarks.gpu_path --out F`.

Sections (results/perf-gpu-path.md and .csv by default):

1. Noise share: per solver (inpaint_random, reduced-width random-weight ADM at 64x64, batch 4, the
   `PERF_OVERRIDES` step counts of benchmarks/perf.py), the solve's wall time and the seconds spent drawing
   noise, two ways: inside the solvers' noise entry point (`solvers.base.RNG.randn_like`, which includes the
   per-image loop, the stacking and the copy to the device; "n/a" where the code has no such method) and
   inside the random-number kernels themselves (every aten random op, timed by a TorchDispatchMode in a
   second solve of the same problem; the mode slows the solve, so the share divides by the plain solve's
   wall time). The same mode counts host reads (`aten._local_scalar_dense`, `aten.is_nonzero`, `aten.equal`)
   per network call.
2. DPPS seconds per step: at 64x64 (batch 4) and at 256x256 batch 8, split into seconds inside the network
   (forward calls and the backward passes through them, benchmarks/clocks.py NetworkClock) and outside it
   (the solver's own work: candidates, operators, noise).
3. Peak memory per image of one DPS step (one forward + backward through the ffhq256-size network with
   random weights, 256x256) with and without activation checkpointing (`ADMPrior(checkpointing=True)`):
   resident set size above its value before the solve at batch 1 and 2; per image = the batch-2 minus the
   batch-1 peak (the weights and fixed buffers cancel).
4. Host syncs and host-device copies per step per solver from `bench.device_audit.audit_solve`, where that
   module exists; otherwise the section says "not available".

Everything runs with `torch.set_num_threads(--threads)` (default 1: the machine is shared), so wall times
are single-thread CPU times. Numbers are measured by this script, never typed in.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import solvers
from benchmarks.clocks import NetworkClock, _malloc_setup, peak_memory, timed
from benchmarks.workload import ROOT, build_prior, make_problem
from priors.base import DiffusionPrior
from priors.gaussian import GaussianPrior

#: step counts per solver: 20 network calls per solve (benchmarks/perf.py PERF_OVERRIDES, copied so that this
#: script measures the same workload on old and new code)
STEPS: dict[str, dict[str, Any]] = {
    "dps": {"num_steps": 20}, "mcg": {"num_steps": 20}, "dpps": {"num_steps": 20}, "scoresde": {"num_steps": 20},
    "reddiff": {"num_steps": 20}, "spgd": {"num_steps": 10, "warmup_steps": 2}, "ddrm": {"num_steps": 20},
    "diffpir": {"num_steps": 20}, "dcdp": {"rounds": 2, "dc_steps": 50, "ddim_steps": 10},
    "pnp_admm": {"denoiser": "prior", "iterations": 10},
}
RANDOM_OPS = ("randn", "normal", "normal_", "rand", "uniform_", "randint", "random_", "randperm", "bernoulli",
              "bernoulli_", "randn_like", "rand_like", "multinomial", "exponential_")
HOST_READS = ("_local_scalar_dense", "is_nonzero", "equal")


class RandomOpTimer(TorchDispatchMode):
    """Seconds inside aten random-number ops and the count of host reads, for everything run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.random_s = 0.0
        self.random_calls = 0
        self.host_reads = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.overloadpacket.__name__
        if name in RANDOM_OPS:
            start = time.perf_counter()
            out = func(*args, **(kwargs or {}))
            self.random_s += time.perf_counter() - start
            self.random_calls += 1
            return out
        if name in HOST_READS:
            self.host_reads += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def noise_entry_clock() -> Iterator[dict[str, float]]:
    """Seconds spent in `solvers.base.RNG.randn_like` (the solvers' noise entry point) while active."""
    stats = {"seconds": 0.0, "calls": 0}
    rng_class = getattr(solvers.base, "RNG", None)
    original = getattr(rng_class, "randn_like", None)
    if original is None:
        stats["seconds"] = float("nan")
        yield stats
        return

    def clocked(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            stats["seconds"] += time.perf_counter() - start
            stats["calls"] += 1

    rng_class.randn_like = clocked  # type: ignore[union-attr]
    try:
        yield stats
    finally:
        rng_class.randn_like = original  # type: ignore[union-attr]


def noise_share_rows(names: list[str], task: str, size: int, width: int, batch: int, device: torch.device,
                     log: Callable[[str], None]) -> list[dict[str, Any]]:
    prior = build_prior(size, width, device, full=False)
    rows = []
    for name in names:
        solver = solvers.get(name, prior, task=task, **STEPS.get(name, {}))
        problem = make_problem(task, batch, size, device)
        row: dict[str, Any] = {"section": "noise", "solver": name, "task": task, "batch": batch, "size": size}
        if not solver.supports(problem.A):
            rows.append({**row, "status": "unsupported"})
            continue
        solver.solve(problem.y, problem.A, problem.generators())  # warm-up (allocator, SVD caches)
        prior.reset_counters()
        with noise_entry_clock() as entry:
            t, _ = timed(lambda: solver.solve(problem.y, problem.A, problem.generators()), device)
        calls = max(prior.nfe.forward // batch, 1)
        prior.reset_counters()
        mode = RandomOpTimer()
        with mode:
            solver.solve(problem.y, problem.A, problem.generators())
        prior.reset_counters()
        row.update(status="ok", network_calls=calls, wall_s=t.wall, entry_s=entry["seconds"],
                   entry_share=entry["seconds"] / t.wall, random_kernel_s=mode.random_s,
                   random_kernel_share=mode.random_s / t.wall, random_ops=mode.random_calls,
                   host_reads_per_call=mode.host_reads / calls)
        rows.append(row)
        log(f"noise {name:9s} wall {t.wall:.2f}s  entry {entry['seconds']:.3f}s ({100 * row['entry_share']:.1f} %)  "
            f"kernels {mode.random_s:.3f}s ({100 * row['random_kernel_share']:.1f} %)  "
            f"host reads/call {row['host_reads_per_call']:.2f}")
    return rows


def dpps_step_row(prior: DiffusionPrior, network: str, size: int, batch: int, steps: int, device: torch.device,
                  log: Callable[[str], None], task: str = "inpaint_random") -> dict[str, Any]:
    solver = solvers.get("dpps", prior, task=task, num_steps=steps)
    problem = make_problem(task, batch, size, device)
    with NetworkClock(device).attached(prior) as net, noise_entry_clock() as entry:
        t, _ = timed(lambda: solver.solve(problem.y, problem.A, problem.generators()), device)
    row = {"section": "dpps", "solver": "dpps", "task": task, "size": size, "batch": batch, "steps": steps,
           "network": network,
           "status": "ok", "wall_s": t.wall, "s_per_step": t.wall / steps, "network_s_per_step": net.seconds / steps,
           "outside_s_per_step": (t.wall - net.seconds) / steps, "noise_entry_s_per_step": entry["seconds"] / steps}
    log(f"dpps {size}x{size} batch {batch}: {row['s_per_step']:.3f} s/step "
        f"(network {row['network_s_per_step']:.3f}, outside {row['outside_s_per_step']:.3f})")
    return row


def memory_rows(device: torch.device, batches: tuple[int, int], log: Callable[[str], None],
                task: str = "inpaint_random") -> list[dict[str, Any]]:
    rows = []
    for ckpt in (False, True):
        prior = build_prior(256, 0, device, full=True, checkpointing=ckpt)
        peaks = {}
        for batch in batches:
            solver = solvers.get("dps", prior, task=task, num_steps=1)
            problem = make_problem(task, batch, 256, device)
            gens = problem.generators()
            with peak_memory(device) as mem:
                t, _ = timed(lambda: solver.solve(problem.y, problem.A, gens), device)
            peaks[batch] = mem["peak_bytes"]
            log(f"memory dps checkpointing={ckpt} batch {batch}: peak {mem['peak_bytes'] / 2**20:.0f} MiB, {t.wall:.1f}s")
        b1, b2 = batches
        rows.append({"section": "memory", "solver": "dps", "task": task, "size": 256, "checkpointing": ckpt,
                     "status": "ok", f"peak_b{b1}_mib": peaks[b1] / 2**20, f"peak_b{b2}_mib": peaks[b2] / 2**20,
                     "per_image_mib": (peaks[b2] - peaks[b1]) / (b2 - b1) / 2**20})
        del prior
    return rows


def audit_rows(names: list[str], log: Callable[[str], None]) -> tuple[list[dict[str, Any]], str]:
    """Rows from `bench.device_audit.audit_solve(name, task)` (a mapping per solver), or a note why none."""
    try:
        from bench import device_audit  # type: ignore[attr-defined]
    except ImportError as err:
        return [], f"not available ({err})"
    measured = Path(solvers.__file__).resolve().parents[1]
    if Path(device_audit.__file__).resolve().parents[1] != measured:  # e.g. an installed copy beside old code
        return [], (f"not available: the measured code ({measured}) has no bench/device_audit.py (the one found, "
                    f"{device_audit.__file__}, belongs to other code)")
    audit_solve = device_audit.audit_solve
    rows = []
    for name in names:
        for task in ("inpaint_random", "deblur_gaussian", "sr4"):
            try:
                result = audit_solve(name, task)
            except Exception as err:  # noqa: BLE001  (an audit that cannot run is reported, not fatal)
                rows.append({"section": "audit", "solver": name, "task": task, "status": f"{type(err).__name__}: {err}"})
                continue
            rows.append({"section": "audit", "solver": name, "task": task, "status": "ok",
                         **{k: v for k, v in dict(result).items() if isinstance(v, (int, float, str, bool))}})
            log(f"audit {name} {task}: {rows[-1]}")
    return rows, ""


def section(run: Callable[[], Any], name: str, many: bool = False) -> Any:
    """run() -> a row (or rows); a failure becomes one row with its message, so the other sections still run."""
    try:
        return run()
    except Exception as err:  # noqa: BLE001  (reported in the output, never silently)
        row = {"section": name, "solver": "-", "status": f"failed: {type(err).__name__}: {err}"}
        print(f"section {name} failed: {row['status']}", flush=True)
        return [row] if many else row


def code_stamp() -> str:
    """Where the measured code lives and its git commit (a '+' marks uncommitted changes)."""
    where = Path(solvers.__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return f"{where} at {rev}{'+' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return f"{where} (no git)"


def _f(v: Any, nd: int = 3) -> str:
    return f"{v:.{nd}f}" if isinstance(v, float) else ("" if v is None else str(v))


def write_markdown(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    L = [f"# GPU path, measured on the CPU ({meta['label']})", "",
         f"Generated by `python -m benchmarks.gpu_path` ({meta['date']}, {meta['minutes']:.1f} min) on code "
         f"{meta['code']}; torch {torch.__version__}, torch.set_num_threads({meta['threads']}) (shared machine, "
         f"{os.cpu_count()} cores; load average at start {meta['load_start']}, end {meta['load_end']}). "
         "Networks: the ADM architecture with random weights (benchmarks/workload.py `build_prior`).", ""]
    noise = [r for r in rows if r["section"] == "noise"]
    if noise:
        r0 = next((r for r in noise if r["status"] == "ok"), {"task": "-", "size": "-", "batch": "-"})
        L += [f"## 1. CPU share of a solve spent drawing noise ({r0['task']}, {r0['size']}x{r0['size']}, "
              f"batch {r0['batch']}, width-{meta['width']} ADM)", "",
              "`entry`: seconds inside `RNG.randn_like` (draw per image, stack, copy to the device); `kernels`: seconds "
              "inside aten random ops (second solve under a TorchDispatchMode); shares are of the plain solve's wall "
              "time. Host reads per network call: `_local_scalar_dense` + `is_nonzero` + `equal` dispatches (each one "
              "a stall on a GPU).", "",
              "| solver | network calls | wall (s) | entry (s) | entry share | kernels (s) | kernel share | random ops | host reads / call |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in noise:
            if r["status"] != "ok":
                L.append(f"| {r['solver']} | {r['status']} |" + " |" * 7)
                continue
            entry = "n/a" if r["entry_s"] != r["entry_s"] else f"{r['entry_s']:.3f}"
            share = "n/a" if r["entry_s"] != r["entry_s"] else f"{100 * r['entry_share']:.1f} %"
            L.append(f"| {r['solver']} | {r['network_calls']} | {r['wall_s']:.2f} | {entry} | {share} | "
                     f"{r['random_kernel_s']:.3f} | {100 * r['random_kernel_share']:.1f} % | {r['random_ops']} | "
                     f"{r['host_reads_per_call']:.2f} |")
        L.append("")
    dpps = [r for r in rows if r["section"] == "dpps"]
    if dpps:
        L += ["## 2. DPPS seconds per step (inpaint_random)", "",
              "`drawing noise`: seconds per step inside `RNG.randn_like` (part of `outside`).", "",
              "| size | batch | steps | network | s/step | in network (s/step) | outside the network (s/step) | drawing noise (s/step) |",
              "|---|---|---|---|---|---|---|---|"]
        for r in dpps:
            if r["status"] != "ok":
                L.append(f"| | | | | {r['status']} | | | |")
                continue
            noise = r["noise_entry_s_per_step"]
            L.append(f"| {r['size']}x{r['size']} | {r['batch']} | {r['steps']} | {r['network']} | {r['s_per_step']:.3f} | "
                     f"{r['network_s_per_step']:.3f} | {r['outside_s_per_step']:.3f} | "
                     f"{'n/a' if noise != noise else f'{noise:.3f}'} |")
        L += ["", meta.get("dpps_note", ""), ""]
    mem = [r for r in rows if r["section"] == "memory"]
    if mem and mem[0]["status"] != "ok":
        L += ["## 3. Peak memory of one DPS step at 256x256", "", mem[0]["status"], ""]
    elif mem:
        keys = [k for k in mem[0] if k.startswith("peak_b")]
        L += ["## 3. Peak memory of one DPS step at 256x256 (ffhq256-size network, random weights)", "",
              "Resident set size above its value before the solve (sampled every 2 ms, glibc malloc_trim before each); "
              "per image = difference of the two batches' peaks.", "",
              "| checkpointing | " + " | ".join(f"peak batch {k[6:-4]} (MiB)" for k in keys) + " | per image (MiB) |",
              "|---|" + "---|" * (len(keys) + 1)]
        for r in mem:
            L.append(f"| {'on' if r['checkpointing'] else 'off'} | " + " | ".join(f"{r[k]:.0f}" for k in keys)
                     + f" | {r['per_image_mib']:.0f} |")
        L.append("")
    audit = [r for r in rows if r["section"] == "audit"]
    L += ["## 4. Host syncs and host-device copies per step (bench.device_audit)", ""]
    if audit:
        keys = [k for r in audit for k in r if k not in ("section", "solver", "task", "status")]
        keys = list(dict.fromkeys(keys))
        L += ["| solver | task | status | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
        for r in audit:
            L.append(f"| {r['solver']} | {r['task']} | {r['status']} | " + " | ".join(_f(r.get(k)) for k in keys) + " |")
        L.append("")
    else:
        L += [meta.get("audit_note", "not available"), ""]
    path.write_text("\n".join(L))


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="GPU-path costs measured on the CPU: noise share, DPPS s/step, "
                                "peak memory with/without checkpointing, device audit (results/perf-gpu-path.md)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "perf-gpu-path.md", help="markdown file (a .csv beside it)")
    p.add_argument("--label", default="", help="title suffix, e.g. before / after")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--width", type=int, default=32, help="channels of the reduced 64x64 ADM")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--solvers", default=",".join(sorted(STEPS)))
    p.add_argument("--big-width", type=int, default=-1,
                   help="the prior for DPPS at 256x256 batch 8: -1 (default) the exact Gaussian prior (a cheap "
                        "stand-in: the time outside the network does not depend on it), 0 the ffhq256-size ADM, "
                        ">= 32 a reduced-width ADM")
    p.add_argument("--big-steps", type=int, default=20, help="DPPS steps at 256x256 (a grid of the 1000 steps)")
    p.add_argument("--skip", default="", help="comma list of sections to skip: noise,dpps,memory,audit")
    args = p.parse_args(argv)

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    _malloc_setup()
    device = torch.device("cpu")
    skip = set(filter(None, args.skip.split(",")))
    names = [n for n in args.solvers.split(",") if n]
    load_start = os.getloadavg()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)

    log(f"measuring code in {code_stamp()}")
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"label": args.label or "current code", "threads": args.threads, "width": args.width}
    if "noise" not in skip:
        rows += section(lambda: noise_share_rows(names, "inpaint_random", 64, args.width, args.batch, device, log),
                        "noise", many=True)
    if "dpps" not in skip:
        small = build_prior(64, args.width, device, full=False)
        rows.append(section(lambda: dpps_step_row(small, f"ADM, {args.width} channels", 64, args.batch,
                                                  STEPS["dpps"]["num_steps"], device, log), "dpps"))
        if args.big_width < 0:
            big: DiffusionPrior = GaussianPrior(image_shape=(3, 256, 256)).to(device)
            network = "exact Gaussian prior (stand-in)"
        else:
            big = build_prior(256, args.big_width, device, full=args.big_width == 0)
            network = "ffhq256-size ADM" if args.big_width == 0 else f"ADM, {args.big_width} channels"
        rows.append(section(lambda: dpps_step_row(big, network, 256, 8, args.big_steps, device, log), "dpps"))
        meta["dpps_note"] = (
            f"64x64: {STEPS['dpps']['num_steps']} steps of the 1000-step grid; 256x256: {args.big_steps} steps. "
            "The candidate count n_k grows with the SNR (2 at the first step, up to 50 late), so a grid of several "
            "steps gives a representative mix; the last step selects nothing. "
            + ("At 256x256 the prior is the exact Gaussian prior, not the ADM network (the ffhq256-size network "
               "needs about 15 GB of activations and minutes per step at batch 8 on one CPU thread): its "
               "`in network` column is not a UNet's; the time outside the network (candidates, operators, noise: "
               "what the GPU-path fix targets) does not depend on the prior." if args.big_width < 0 else ""))
    if "memory" not in skip:
        rows += section(lambda: memory_rows(device, (1, 2), log), "memory", many=True)
    if "audit" not in skip:
        audit, note = audit_rows(names, log)
        rows += audit
        meta["audit_note"] = note
    meta.update(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                minutes=(time.perf_counter() - start) / 60, code=code_stamp(),
                load_start=", ".join(f"{v:.2f}" for v in load_start),
                load_end=", ".join(f"{v:.2f}" for v in os.getloadavg()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out.with_suffix(".csv"))
    write_markdown(args.out, rows, meta)
    log(f"wrote {args.out} and {args.out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
