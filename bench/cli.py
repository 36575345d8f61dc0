"""The `python -m bench` command line.

    python -m bench run   --protocol NAME [--limit N] [--datasets a,b] [--tasks a,b] [--solvers a,b]
                          [--batch-size B] [--device cpu|cuda] [--threads N] [--results DIR] [--retry-errors]
    python -m bench table --protocol NAME [--results DIR]
    python -m bench data check --protocol NAME [--datasets a,b]     (folder vs manifest: missing/changed/extra)
    python -m bench data manifest FOLDER --dataset NAME --out FILE  (hash a folder into a manifest)
    python -m bench checkpoints [NAMES...]                          (priors/checkpoints.py)
    python -m bench protocols                                       (list protocols)

Results go to $RESTOREBENCH_RESULTS/<protocol> or ./results/<protocol>. User errors print one message
and exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from bench.errors import BenchError


def _csv(value: str | None) -> list[str] | None:
    return [v for v in value.split(",") if v] if value else None


def results_dir(protocol_name: str, override: str | None = None) -> Path:
    from bench.protocol import REPO_ROOT
    if override:
        return Path(override)
    base = os.environ.get("RESTOREBENCH_RESULTS")
    return (Path(base) if base else REPO_ROOT / "results") / protocol_name


def cmd_run(args: argparse.Namespace) -> int:
    from bench import protocol as proto
    from bench.runner import Runner
    p = proto.load(args.protocol).restrict(_csv(args.datasets), _csv(args.tasks), _csv(args.solvers))
    if args.limit is not None and args.limit < 1:
        raise BenchError("--limit must be >= 1")
    if args.batch_size is not None and args.batch_size < 1:
        raise BenchError("--batch-size must be >= 1")
    device = args.device or ("cuda" if _cuda() else "cpu")
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per rank
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    runner = Runner(p, results_dir(p.name, args.results), device=device, batch_size=args.batch_size,
                    limit=args.limit, retry_errors=args.retry_errors, threads=args.threads)
    counts = runner.run()
    print(f"{p.name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" -> {runner.dir}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from bench import grids, protocol as proto, store, tables
    p = proto.load(args.protocol)
    out = results_dir(p.name, args.results)
    records = store.load_records(out)
    if not records:
        raise BenchError(f"no records in {out}/records; run `python -m bench run --protocol {args.protocol}` first")
    layout = tables.Layout.from_protocol(p)
    ref = proto.repo_path(p.reference) if p.reference else None
    files = tables.write(records, store.load_configs(out), out, p.name, layout, ref, p.description)
    files += grids.write_grids(out, layout.methods)
    for f in files:
        print(f)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from bench import data, protocol as proto
    if args.action == "manifest":
        if not args.folder or not args.dataset or not args.out:
            raise BenchError("usage: python -m bench data manifest FOLDER --dataset NAME --out FILE")
        m = data.write_manifest(Path(args.folder), args.dataset, Path(args.out))
        print(f"{args.out}: {len(m['images'])} images")
        return 0
    p = proto.load(args.protocol).restrict(_csv(args.datasets))
    bad = False
    for ds in p.datasets:
        check = data.check_folder(ds, ds.count, list_extra=True)
        status = "ok" if check.ok else "MISMATCH"
        print(f"{ds.name}: {status}: {len(check.refs)} found, {len(check.missing)} missing, "
              f"{len(check.changed)} changed, {len(check.extra)} extra files in {check.root}")
        if not check.ok:
            bad = True
            print(data.describe_problems(ds, check))
        if check.extra:
            print("  extra (not in the manifest, not used): " + ", ".join(check.extra[:10])
                  + (" ..." if len(check.extra) > 10 else ""))
    return 2 if bad else 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    try:
        from priors.checkpoints import main
    except ImportError as err:
        raise BenchError(f"priors.checkpoints is not available: {err}") from None
    return int(main(args.names) or 0)


def cmd_protocols(args: argparse.Namespace) -> int:
    from bench import protocol as proto
    for name in proto.available():
        p = proto.load(name)
        print(f"{name}: {p.description.strip().splitlines()[0] if p.description.strip() else ''}")
    return 0


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench", description="RestoreBench harness")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a protocol (resumable)")
    r.add_argument("--protocol", required=True)
    r.add_argument("--limit", type=int, help="first N images of each dataset")
    r.add_argument("--datasets"), r.add_argument("--tasks"), r.add_argument("--solvers")
    r.add_argument("--batch-size", type=int)
    r.add_argument("--device")
    r.add_argument("--threads", type=int, help="CPU threads (default: 1 for images <= 64 px on CPU, else torch's)")
    r.add_argument("--results", help="results folder (default results/<protocol>)")
    r.add_argument("--retry-errors", action="store_true", help="rerun images whose record is an error")
    r.set_defaults(func=cmd_run)
    t = sub.add_parser("table", help="write the tables and grids from the records")
    t.add_argument("--protocol", required=True)
    t.add_argument("--results")
    t.set_defaults(func=cmd_table)
    d = sub.add_parser("data", help="check data folders against manifests / write a manifest")
    d.add_argument("action", choices=["check", "manifest"])
    d.add_argument("folder", nargs="?")
    d.add_argument("--protocol", default="table1")
    d.add_argument("--datasets"), d.add_argument("--dataset"), d.add_argument("--out")
    d.set_defaults(func=cmd_data)
    c = sub.add_parser("checkpoints", help="download / verify prior checkpoints")
    c.add_argument("names", nargs="*", help="names and options of priors/checkpoints.py (--list, --dir, --url)")
    c.set_defaults(func=cmd_checkpoints)
    s = sub.add_parser("protocols", help="list the protocols")
    s.set_defaults(func=cmd_protocols)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["checkpoints"]:  # every option goes to priors/checkpoints.py (--list, --dir, --url)
        argv = ["checkpoints", "--", *argv[1:]] if len(argv) > 1 else argv
    args = parser().parse_args(argv)
    warnings.simplefilter("default")
    try:
        return args.func(args)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; stored records are kept, rerun the same command to resume", file=sys.stderr)
        return 130
