"""`python -m bench posterior`: the exact-posterior accuracy tables (issue 16 parts A and B).

    python -m bench posterior --protocol posterior-gaussian            # Gaussian image prior (bench/posterior.py)
    python -m bench posterior --protocol posterior-gmm                 # MCGdiff GMM benchmark (bench/posterior_gmm.py)
    python -m bench posterior --protocol posterior-gmm --smoke         # CI size (the protocol's `smoke:` block)
    python -m bench posterior --protocol posterior-gmm --solvers dps,ddrm --rerun
    python -m bench posterior --protocol posterior-gmm --jobs 2        # two processes (both cores of this machine)

Results (CSV, Markdown, metric card, timing, records) go to results/<protocol name>/ unless --out is given.
Runs are incremental: rows whose records are current are skipped; --rerun recomputes the selected rows.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.errors import BenchError
from bench.protocol import REPO_ROOT, resolve_path
from bench.store import load_records
from common.fileio import atomic_write


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("posterior", help="exact-posterior accuracy tables (Gaussian prior, GMM benchmark)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", required=True,
                   help="posterior-gaussian, posterior-gmm, or a .yaml file of either kind")
    p.add_argument("--smoke", action="store_true", help="use the protocol's `smoke:` block (CI size)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default results/<protocol name>)")
    p.add_argument("--solvers", default=None,
                   help="comma-separated rows to run (solver names, exact_posterior, prior_sample); default all")
    p.add_argument("--rerun", action="store_true", help="recompute the selected rows even if current")
    p.add_argument("--tables-only", action="store_true", help="rewrite the tables from the stored records")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on the shared 2-core machine two threads ran the "
                        "GMM maps 10-50x slower than one; use 2 or more on a machine of your own)")
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes (default 1): the rows are shared out by their recorded seconds, each "
                        "worker runs its rows with --threads threads, and the tables are written when all are done")
    p.add_argument("--summary-file", type=Path, default=None, help=argparse.SUPPRESS)  # a --jobs worker's timing
    p.set_defaults(func=handler)


def row_names(module: Any, proto: Any, only: list[str] | None) -> list[str]:
    """Every row a run computes: the reference rows, then the solvers (the protocol's order)."""
    names = module.solver_names(proto, only)
    refs = [r for r in module.REFERENCE_ROWS if (not only or r in only) and r not in names]
    return refs + names


def share_rows(names: list[str], seconds: dict[str, float], jobs: int) -> list[list[str]]:
    """Split rows into `jobs` groups of about equal recorded seconds (longest first, each to the lightest
    group); rows without records weigh the median of those with, or 1."""
    known = sorted(v for v in seconds.values() if v > 0)
    default = known[len(known) // 2] if known else 1.0
    weight = {n: seconds.get(n) or default for n in names}
    groups: list[list[str]] = [[] for _ in range(max(1, min(jobs, len(names))))]
    load = [0.0] * len(groups)
    for n in sorted(names, key=lambda n: (-weight[n], n)):
        i = load.index(min(load))
        groups[i].append(n)
        load[i] += weight[n]
    return [g for g in groups if g]


def run_jobs(args: argparse.Namespace, path: Path, module: Any, proto: Any, out: Path,
             only: list[str] | None) -> int:
    """`--jobs N`: N child processes of this command, each with its share of the rows (`--solvers`)."""
    recorded: dict[str, float] = {}
    if (out / "records").exists():
        for r in load_records(out):
            recorded[r["solver"]] = recorded.get(r["solver"], 0.0) + float(r.get("seconds") or 0.0)
    groups = share_rows(row_names(module, proto, only), recorded, args.jobs)
    start = time.perf_counter()
    procs, files = [], []
    for i, group in enumerate(groups):
        files.append(out / f".job{i + 1}-{os.getpid()}.json")
        cmd = [sys.executable, "-m", "bench", "posterior", "--protocol", str(path), "--out", str(out),
               "--solvers", ",".join(group), "--threads", str(args.threads), "--summary-file", str(files[-1]),
               *(["--smoke"] if args.smoke else []), *(["--rerun"] if args.rerun else [])]
        print(f"job {i + 1}/{len(groups)}: {', '.join(group)}", flush=True)
        procs.append(subprocess.Popen(cmd))
    codes = [proc.wait() for proc in procs]
    wall = time.perf_counter() - start
    merged: dict[str, dict[str, float]] = {}  # the workers' per-row seconds, under the key their module uses
    for f in files:
        if f.exists():
            for key, value in json.loads(f.read_text()).items():
                if key.startswith("seconds_by_") and isinstance(value, dict):
                    for k, v in value.items():
                        merged.setdefault(key, {})[k] = round(merged.get(key, {}).get(k, 0.0) + v, 1)
            f.unlink()
    module.write_tables(proto, out, {"protocol": proto.name, "seconds_this_run": round(wall, 1),
                                     "threads": f"{len(groups)} jobs x {args.threads}",
                                     **{k: dict(sorted(v.items())) for k, v in merged.items()},
                                     "jobs": len(groups), "rows_per_job": groups})
    failed = [f"job {i + 1} ({', '.join(g)}) exited with {c}" for i, (g, c) in enumerate(zip(groups, codes)) if c]
    print(f"done in {wall:.1f} s with {len(groups)} jobs" + (f"; {'; '.join(failed)}" if failed else ""))
    print(f"tables: {out}")
    return 1 if failed else 0


def handler(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise BenchError(f"--threads must be >= 1, got {args.threads}")
    if args.jobs < 1:
        raise BenchError(f"--jobs must be >= 1, got {args.jobs}")
    import torch
    torch.set_num_threads(args.threads)
    path = resolve_path(args.protocol)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise BenchError(f"protocol {path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(raw, dict) or not ({"dims", "image_size"} & set(raw)):
        raise BenchError(f"protocol {path} is not a posterior protocol (it needs `dims:` for the GMM benchmark or "
                         f"`image_size:` for the Gaussian one); image tables run with `python -m bench run`")
    if "dims" in raw:
        from bench import posterior_gmm as module
    else:
        from bench import posterior as module  # type: ignore[no-redef]
    proto = module.parse_protocol(raw, str(path), smoke=args.smoke)
    out = args.out if args.out is not None else REPO_ROOT / "results" / proto.name
    only = [s.strip() for s in args.solvers.split(",") if s.strip()] if args.solvers else None
    if args.tables_only:
        module.write_tables(proto, Path(out))
    elif args.jobs > 1:
        return run_jobs(args, path, module, proto, Path(out), only)
    else:
        summary = module.run(proto, Path(out), only=only, rerun=args.rerun)
        if args.summary_file is not None:
            atomic_write(args.summary_file, lambda tmp: Path(tmp).write_text(json.dumps(summary)))
        print(f"done in {summary['seconds_this_run']} s")
    print(f"tables: {out}")
    return 0
