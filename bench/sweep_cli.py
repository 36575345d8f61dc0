"""`python -m bench sweep`: tune hyper-parameters on validation splits, NFE sweeps, published-vs-tuned table
(bench/sweep.py)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench.errors import BenchError

EXAMPLES = """examples:
  python -m bench sweep --protocol demo --solver dps --task sr4 --objective psnr --trials 12 --images 4
  python -m bench sweep --protocol demo --trials 8 --images 4            # every solver x task of the protocol
  python -m bench sweep --protocol demo --published-vs-tuned             # test-split table of the tuned layer
  python -m bench sweep --protocol demo --solver dps --nfe num_steps=100,250,500,1000   # quality-vs-cost curve
A crashed sweep resumes where it stopped (trials are cached in results/<protocol>-sweep/); the tuned values go
to solvers/configs/tuned/<protocol>.yaml, used by a protocol with `tuning: tuned`.
"""


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sweep", help="tune hyper-parameters on the validation split (Optuna TPE, cached, resumable)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    s.add_argument("--protocol", default="demo", help="protocol name or .yaml path (default demo)")
    s.add_argument("--solver", "--solvers", dest="solvers", help="entries to tune, comma-separated (default: all)")
    s.add_argument("--task", "--tasks", dest="tasks", help="tasks, comma-separated (default: all of the protocol)")
    s.add_argument("--dataset", "--datasets", dest="datasets", help="datasets, comma-separated (default: all)")
    s.add_argument("--objective", default="psnr", help="psnr | lpips | psnr-lpips:W (default psnr)")
    s.add_argument("--trials", type=int, default=12, help="trials per solver, task and dataset (default 12; "
                                                          "trial 0 = published values)")
    s.add_argument("--images", type=int, default=None, help="validation images per trial (default: the whole split)")
    s.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    s.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    s.add_argument("--results", default=None, help="sweep folder (default results/<protocol>-sweep)")
    s.add_argument("--no-write", action="store_true", help="do not update solvers/configs/tuned/<protocol>.yaml")
    s.add_argument("--nfe", metavar="KEY=V1,V2,...", help="run the solvers at several values of a cost key on the "
                   "protocol's own images (into results/<protocol>/) for the quality-vs-cost figures")
    s.add_argument("--published-vs-tuned", action="store_true",
                   help="run the test split with published and tuned values; write published_vs_tuned.md")
    s.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module that defines solvers or priors first; repeatable")
    s.set_defaults(func=cmd_sweep)


def _results(base: str | None, name: str) -> Path:
    from bench.protocol import REPO_ROOT
    if base:
        return Path(base)
    root = os.environ.get("RESTOREBENCH_RESULTS")
    return (Path(root) if root else REPO_ROOT / "results") / name


def cmd_sweep(args: argparse.Namespace) -> int:
    from bench import protocol as proto
    from bench import sweep
    for module in args.imports:
        proto.import_user_module(module)
    p = proto.load(args.protocol).restrict(_csv(args.datasets), _csv(args.tasks), _csv(args.solvers))
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if args.nfe:
        key, values = sweep.parse_nfe(args.nfe)
        out = _results(args.results, p.name)
        sweep.nfe_sweep(p, key, values, out, device=args.device, log=log)
        print(f"{p.name}: {key} in {values} -> {out}; `python -m bench table --protocol {p.name}` draws the curves "
              f"in {out}/figures/")
        return 0
    out = _results(args.results, f"{p.name}-sweep")
    if args.published_vs_tuned:
        path = sweep.published_vs_tuned(p, out, device=args.device, log=log)
        print(path)
        return 0
    objective = sweep.Objective.parse(args.objective)
    log(sweep.budget_line(args.trials, args.images, p) + f"; objective {objective.label}; TPE seed {args.seed}")
    t0 = time.perf_counter()
    studies = sweep.sweep(p, objective, args.trials, args.images, out, device=args.device, seed=args.seed,
                          write_layer=not args.no_write, log=log)
    for s in studies:
        b, pub = s.best, s.trials[0]
        print(f"{s.entry} / {s.dataset} / {s.task}: published {pub.value:.4g} -> best {b.value:.4g} "
              f"({', '.join(f'{k}={v}' for k, v in b.params.items())})")
    where = "" if args.no_write else f"; tuned layer: solvers/configs/tuned/{p.name}.yaml"
    print(f"{len(studies)} studies in {time.perf_counter() - t0:.0f} s -> {out}/studies{where}")
    if not studies:
        raise BenchError("nothing to tune: no chosen solver has a `search:` block in solvers/configs/<name>.yaml")
    return 0
