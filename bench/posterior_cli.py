"""`python -m bench posterior`: the exact-posterior accuracy tables (issue 16 parts A and B).

    python -m bench posterior --protocol posterior-gaussian            # Gaussian image prior (bench/posterior.py)
    python -m bench posterior --protocol posterior-gmm                 # MCGdiff GMM benchmark (bench/posterior_gmm.py)
    python -m bench posterior --protocol posterior-gmm --smoke         # CI size (the protocol's `smoke:` block)
    python -m bench posterior --protocol posterior-gmm --solvers dps,ddrm --rerun

Results (CSV, Markdown, metric card, timing, records) go to results/<protocol name>/ unless --out is given.
Runs are incremental: rows whose records are current are skipped; --rerun recomputes the selected rows.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from bench.errors import BenchError
from bench.protocol import REPO_ROOT, resolve_path


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
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise BenchError(f"--threads must be >= 1, got {args.threads}")
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
    else:
        summary = module.run(proto, Path(out), only=only, rerun=args.rerun)
        print(f"done in {summary['seconds_this_run']} s")
    print(f"tables: {out}")
    return 0
