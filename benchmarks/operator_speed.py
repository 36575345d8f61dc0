"""Speed of every operator at 16x3x256x256 on the CPU: `python -m benchmarks.operator_speed`.

Times forward, adjoint, pinv, prox (every method the operator offers) and the SVD (build, V^T, V) with
`torch.set_num_threads(2)`, median (and min) of `--runs` repetitions after one warm-up call, and writes
results/perf-operators.md and results/perf-operators.csv with the machine, the load average and the
library versions. The target (issue): blur forward and adjoint < 0.25 s each on the 2-core CPU.
The CG prox runs with scico's PnP-ADMM settings (tol 1e-3, at most 30 iterations).
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import PIL
import scipy
import torch

import operators
from operators import OperatorError

ROOT = Path(__file__).resolve().parents[1]
SEEDS = list(range(16))
BOX = {"position": "spgd"}


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float, float]:
    """(median wall, min wall, median process CPU time) in seconds; slow calls (> 3 s) run 3 times."""
    start = time.perf_counter()
    fn()  # warm-up (caches, FFT plans)
    runs = min(runs, 3) if time.perf_counter() - start > 3 else runs
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), min(wall), statistics.median(cpu)


def cases(A: operators.Operator, x: torch.Tensor) -> list[tuple[str, str, Callable[[], object]]]:
    """(operation, method, call) for everything the operator offers."""
    out: list[tuple[str, str, Callable[[], object]]] = [("forward", "", lambda: A(x))]
    if not A.is_linear:
        return out
    y = A(x)
    out.append(("adjoint", "", lambda: A.adjoint(y)))
    try:
        A.pinv(y)
        out.append(("pinv", "", lambda: A.pinv(y)))
    except OperatorError:
        pass
    for method in getattr(A, "prox_methods", ("default",)):
        kwargs = {} if method == "default" else {"method": method}
        if method == "cg":
            kwargs.update(tol=1e-3, max_iter=30)
        out.append(("prox", method, lambda kw=kwargs: A.prox(x, y, 0.1, **kw)))
    if A.has_svd:
        def build() -> None:
            A._cache.clear()
            A.svd
        out.append(("svd_build", "", build))
        v = A.svd.Vt(x)
        out.append(("svd_Vt", "", lambda: A.svd.Vt(x)))
        out.append(("svd_V", "", lambda: A.svd.V(v)))
    return out


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical cores": str(os.cpu_count()), "torch threads": str(torch.get_num_threads()),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "pillow": PIL.__version__, "platform": platform.platform()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "perf-operators.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.rand(16, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    load_start = os.getloadavg()
    rows: list[dict[str, str]] = []
    for task in operators.names():
        try:
            A = operators.get(task, image_shape=(3, 256, 256), seeds=SEEDS, sigma_y=0.05, **(BOX if task == "inpaint_box" else {}))
        except OperatorError:
            rows.append({"task": task, "operation": "-", "method": "", "median_s": "", "min_s": "", "cpu_s": "",
                         "note": "not measured: needs the external BKSE weights GOPRO_wVAE.pth (absent here)"})
            continue
        for operation, method, fn in cases(A, x):
            med, best, cpu = timed(fn, args.runs)
            rows.append({"task": task, "operation": operation, "method": method, "median_s": f"{med:.4f}",
                         "min_s": f"{best:.4f}", "cpu_s": f"{cpu:.4f}", "note": ""})
            print(f"{task:16s} {operation:9s} {method:7s} median {med:.4f} s  min {best:.4f} s  cpu {cpu:.4f} s",
                  flush=True)
    load_end = os.getloadavg()
    info = machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# Operator speed (CPU)", "",
             f"Batch 16x3x256x256 float32, {args.threads} torch threads (scipy.fft workers = threads), wall-clock "
             f"median and min of {args.runs} runs after one warm-up (3 runs for calls over 3 s), and the median "
             "process CPU time (all threads), in seconds. Generated by `python -m benchmarks.operator_speed`. "
             "Target: blur forward and adjoint < 0.25 s. CG prox: tol 1e-3, <= 30 iterations (scico PnP-ADMM "
             "settings). When other jobs load the machine (see the load average below) wall times are inflated; "
             "CPU time / threads then estimates the wall time on an idle machine.", "",
             "| task | operation | method | wall median (s) | wall min (s) | CPU (s) | note |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['operation']} | {r['method']} | {r['median_s']} | {r['min_s']} | {r['cpu_s']} "
              f"| {r['note']} |" for r in rows]
    lines += ["", "Machine:", ""] + [f"- {k}: {v}" for k, v in info.items()]
    lines += [f"- load average (1, 5, 15 min) at start: {', '.join(f'{v:.2f}' for v in load_start)}; "
              f"at end: {', '.join(f'{v:.2f}' for v in load_end)} (other jobs share the cores when it exceeds "
              f"the core count, which inflates every time)", ""]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out} and {args.out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
