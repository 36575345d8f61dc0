"""The `python -m bench` command line (`python -m bench <command> --help` for every flag, with examples).

    python -m bench run   --protocol NAME [--limit N] [--datasets a,b] [--tasks a,b] [--solvers a,b]
                          [--set SOLVER.KEY=VALUE ...] [--import MODULE ...] [--batch-size N|ds=N,...]
                          [--device cpu|cuda[:N]] [--threads N] [--results DIR] [--rerun stale|errors|all]
                          [--precision fp32|bf16|fp16] [--channels-last] [--compile] [--checkpointing]
                          [--tf32] [--cudnn-benchmark] [--deterministic] [--rng-device run|cpu]
    python -m bench table --protocol NAME [same selection, --set and speed flags] [--all-configs]
    python -m bench plan  --protocol NAME [--device ...] [--batch-size ...] [--random-weights]
    python -m bench solvers [NAME ...] | tasks | protocols
    python -m bench check-solver MODULE:CLASS                        (the solver contract on your class)
    python -m bench data check --protocol NAME [--datasets a,b]     (folder vs manifest: missing/changed/extra)
    python -m bench data manifest FOLDER --dataset NAME --out FILE  (hash a folder into a manifest)
    python -m bench checkpoints [NAMES...]                          (priors/checkpoints.py)

Results go to $RESTOREBENCH_RESULTS/<protocol> or ./results/<protocol>. User errors print one line
and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.store import RERUN_CHOICES


def _csv(value: str | None) -> list[str] | None:
    return [v for v in value.split(",") if v] if value else None


def results_dir(protocol_name: str, override: str | None = None) -> Path:
    from bench.protocol import REPO_ROOT
    if override:
        return Path(override)
    base = os.environ.get("RESTOREBENCH_RESULTS")
    return (Path(base) if base else REPO_ROOT / "results") / protocol_name


def _speed_overrides(args: argparse.Namespace) -> dict:
    out = {}
    if args.precision:
        out["precision"] = args.precision
    for key in ("channels_last", "compile", "checkpointing", "tf32", "cudnn_benchmark", "deterministic"):
        value = getattr(args, key)
        if value is not None:
            out[key] = value
    return out


def load_protocol(args: argparse.Namespace):
    """The protocol of a `run`/`table`/`plan` command (parsed with `_selection_args` and `_speed_args`) with
    the command line's changes applied (--import, --datasets/--tasks/--solvers, --set, speed flags,
    --rng-device), in that order."""
    from bench import protocol as proto
    for module in args.imports or []:
        proto.import_user_module(module)
    p = proto.load(args.protocol).restrict(_csv(args.datasets), _csv(args.tasks), _csv(args.solvers))
    p = proto.apply_sets(p, args.set)
    speed = _speed_overrides(args)
    if speed:
        p.speed = proto.parse_speed("command line", {**p.speed, **speed})
    if args.rng_device:
        p.rng_device = args.rng_device
    return p


def _batch_sizes(value: str | None, p) -> int | None:
    """--batch-size N (every dataset) or --batch-size ffhq=8,imagenet=2 (per dataset, into the protocol)."""
    if value is None:
        return None
    if "=" not in value:
        try:
            n = int(value)
        except ValueError:
            raise BenchError(f"--batch-size {value!r}: give a number or NAME=N,NAME=N per dataset") from None
        if n < 1:
            raise BenchError("--batch-size must be >= 1")
        return n
    import dataclasses
    sizes = {}
    for part in value.split(","):
        name, _, n = part.partition("=")
        if not n.strip().isdigit() or int(n) < 1:
            raise BenchError(f"--batch-size {value!r}: {part!r} is not NAME=N with N >= 1")
        sizes[name.strip()] = int(n)
    unknown = sorted(set(sizes) - {d.name for d in p.datasets})
    if unknown:
        raise BenchError(f"--batch-size: no dataset {', '.join(map(repr, unknown))} in this run; it has "
                         f"{', '.join(d.name for d in p.datasets)}")
    p.datasets = [dataclasses.replace(d, batch_size=sizes.get(d.name, d.batch_size)) for d in p.datasets]
    return None


def cmd_run(args: argparse.Namespace) -> int:
    from bench.runner import Runner
    p = load_protocol(args)
    if args.limit is not None and args.limit < 1:
        raise BenchError("--limit must be >= 1")
    batch_size = _batch_sizes(args.batch_size, p)
    from bench.devices import resolve_device  # None -> cuda|cpu; torchrun: cuda:LOCAL_RANK + set_device
    device = str(resolve_device(args.device))
    out = results_dir(p.name, args.results)  # checked (created, written) by the runner after its preflight
    runner = Runner(p, out, device=device, batch_size=batch_size, limit=args.limit,
                    rerun="errors" if args.retry_errors else args.rerun, threads=args.threads)
    counts = runner.run()
    print(f"{p.name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" -> {runner.dir}")
    return 0


def stored_results(args: argparse.Namespace) -> tuple[Any, Path, list[dict], Any]:
    """(protocol, results folder, every stored record, the runner's row selection) for commands that read a
    finished run (`table`, `report`); one-line errors for a missing folder or an empty store."""
    from bench import store
    from bench.runner import Runner
    from bench.results_folder import check_results_dir
    p = load_protocol(args)
    out = check_results_dir(results_dir(p.name, args.results), create=False)
    records = store.load_records(out, all_versions=True)
    if not records:
        raise BenchError(f"no records in {out}/records; run `python -m bench run --protocol {args.protocol}` first")
    return p, out, records, Runner(p, out, device="cpu", progress=False, log=lambda m: None).selection()


def cmd_table(args: argparse.Namespace) -> int:
    from bench import grids, store, tables
    from bench import protocol as proto
    p, out, records, selection = stored_results(args)
    layout = tables.Layout.from_protocol(p)
    ref = proto.repo_path(p.reference) if p.reference else None
    files = tables.write(records, store.load_configs(out), out, p.name, layout, ref, p.description,
                         selection=selection.cells, selection_problem=selection.problem,
                         all_configs=args.all_configs,
                         fingerprints={**store.load_fingerprints(out), **selection.files})
    files += grids.write_grids(out, layout.methods)
    if p.set_metrics or args.fid:
        from bench import fid
        files += fid.write_tables(out, records, store.load_configs(out), selection.cells or None, dict(layout.methods),
                                  p.name, which=p.set_metrics or fid.SET_METRICS, all_configs=args.all_configs,
                                  fingerprints={**store.load_fingerprints(out), **selection.files})
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


def cmd_check_solver(args: argparse.Namespace) -> int:
    from bench import solver_contract as contract
    cls = contract.load_solver_class(args.solver)
    tasks = _csv(args.tasks) or list(contract.TABLE1_TASKS)
    import operators
    unknown = [t for t in tasks if t not in operators.names()]
    if unknown:
        raise BenchError(f"unknown task(s) {', '.join(unknown)}; tasks: {', '.join(operators.names())}")
    if args.image_size < 8:
        raise BenchError("--image-size must be >= 8")
    if args.prior == "gaussian":
        prior = contract.gaussian_prior(args.image_size)
    else:
        from bench.prior_loading import load_prior
        prior = load_prior(args.prior, args.image_size, "cpu")
    results = contract.check_solver(contract.class_factory(cls, smoke=not args.full), prior, tasks)
    for result in results:
        print(result.line())
    failed = sum(not r.ok for r in results)
    skipped = sum(r.skipped for r in results)
    print(f"{cls.__name__}: {len(results) - failed - skipped} passed, {failed} failed, {skipped} task(s) skipped"
          + (" (with its `smoke` overrides; --full for its own settings)" if not args.full and cls.smoke else ""))
    return 1 if failed else 0


def cmd_solvers(args: argparse.Namespace) -> int:
    from bench import catalog
    from bench.protocol import import_user_module
    import solvers
    for module in args.imports or []:
        import_user_module(module)
    unknown = [n for n in args.names if n not in solvers.available()]
    if unknown:
        raise BenchError(f"unknown solver(s) {', '.join(unknown)}; registered: {', '.join(solvers.available())} "
                         f"(a solver of your own: --import yourmodule)")
    infos = catalog.solver_infos(args.names or None)
    if args.names:
        print("\n\n".join(catalog.format_solver_detail(i) for i in infos))
    else:
        print(catalog.format_solvers(infos))
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from bench import catalog
    print(catalog.format_tasks(catalog.task_infos()))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from bench import plan as planning
    from bench.devices import resolve_device
    from bench.runner import apply_speed_flags
    p = load_protocol(args)
    for flag, value in (("--limit", args.limit), ("--repeats", args.repeats), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise BenchError(f"{flag} must be >= 1")
    batch_size = _batch_sizes(args.batch_size, p)
    device = resolve_device(args.device)
    apply_speed_flags(p.speed, device)
    progress = (lambda msg: print(msg, file=sys.stderr, flush=True))
    rows = planning.plan(p, device, batch_size=batch_size, limit=args.limit, measure=not args.no_measure,
                         quick=args.quick, random_weights=args.random_weights, repeats=args.repeats or 3,
                         progress=progress, threads=args.threads)
    weights = " (random weights of the registered architectures)" if args.random_weights else ""
    from bench.runner import default_threads
    threads = args.threads or default_threads(p, device)
    text = planning.format_plan(rows, title=f"bench plan: {p.name}{weights}",
                                device=planning.describe_device(device, threads))
    print(text, end="")
    if args.out:
        out = Path(args.out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
        except OSError as err:
            raise BenchError(f"cannot write {out}: {err.strerror or err}; choose another --out path") from None
        print(f"wrote {out}", file=sys.stderr)
    return 0


RUN_EXAMPLES = """examples:
  python -m bench run --protocol demo
  python -m bench run --protocol demo --solvers spgd,dps --set spgd.lr=2.0 --set dps.zeta=0.5
  python -m bench run --protocol demo --import mysolver --solvers mine      # your solver, any protocol
  python -m bench run --protocol table1 --device cuda --batch-size ffhq=8,imagenet=2 --precision bf16
  torchrun --nproc_per_node=8 -m bench run --protocol table1
"""
TABLE_EXAMPLES = """examples:
  python -m bench table --protocol demo
  python -m bench table --protocol demo --set spgd.lr=2.0      # the table of that configuration
  python -m bench table --protocol demo --all-configs          # every configuration in the store
"""


CHECK_SOLVER_EXAMPLES = """examples:
  python -m bench check-solver mysolver:MySolver                  # mysolver.py in the current folder
  python -m bench check-solver path/to/mysolver.py:MySolver --tasks inpaint_random,sr4
exit status: 0 all checks pass, 1 a check failed, 2 the class could not be loaded
"""
SOLVERS_EXAMPLES = """examples:
  python -m bench solvers                  # every solver: tasks, NFE budget, hyper-parameters with sources
  python -m bench solvers spgd             # one solver in full, with its per-task / per-dataset values
  python -m bench solvers --import mysolver
"""
PLAN_EXAMPLES = """examples:
  python -m bench plan --protocol table1 --device cuda
  python -m bench plan --protocol table1 --device cpu --random-weights --quick --out results/plan-table1-cpu.md
  python -m bench plan --protocol demo --batch-size 1
"""


def _speed_args(r: argparse.ArgumentParser) -> None:
    speed = r.add_argument_group("speed switches (each enters the config hash and the table footer)")
    speed.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="autocast of the ADM UNet (default fp32)")
    for flag, text in (("channels-last", "NHWC convolutions"), ("compile", "torch.compile the UNet"),
                       ("checkpointing", "activation checkpointing (less memory, more time)"),
                       ("tf32", "TF32 matmul/convolutions (Ampere+ GPUs)"), ("cudnn-benchmark", "cuDNN autotuning"),
                       ("deterministic", "deterministic CUDA kernels (results independent of the batch size)")):
        speed.add_argument(f"--{flag}", dest=flag.replace("-", "_"), action=argparse.BooleanOptionalAction,
                           default=None, help=f"{text} (default: the protocol's)")
    speed.add_argument("--rng-device", choices=("run", "cpu"),
                       help="where random streams live: run (the run's device, fast) or cpu (identical numbers "
                            "on every device); default: the protocol's")


def _selection_args(p: argparse.ArgumentParser, results: bool = True) -> None:
    p.add_argument("--protocol", required=True, help="a protocol name (python -m bench protocols) or a .yaml path")
    p.add_argument("--datasets", help="comma-separated subset of the protocol's datasets")
    p.add_argument("--tasks", help="comma-separated subset of the protocol's tasks")
    p.add_argument("--solvers", help="comma-separated entries of the protocol, or any registered solver")
    p.add_argument("--set", action="append", metavar="SOLVER.KEY=VALUE",
                   help="override a hyper-parameter (YAML value, checked against the solver's keys); repeatable")
    p.add_argument("--import", dest="imports", action="append", metavar="MODULE",
                   help="import a module (dotted name or .py path) that defines solvers or priors; repeatable")
    if results:
        p.add_argument("--results", help="results folder (default $RESTOREBENCH_RESULTS/<protocol> or "
                                         "results/<protocol>)")


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line naming the fix (`--help`) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message}; see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)


#: modules that add one subcommand each: `add_parser(sub)` registers it (name, help, args, func)
COMMAND_MODULES: tuple[str, ...] = ("bench.posterior_cli", "bench.diagnose_cli", "bench.sweep_cli",
                                     "bench.report_cli", "bench.train_restorer_cli")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m bench", description="RestoreBench harness",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="examples:\n  python -m bench run --protocol demo && python -m bench table "
                                        "--protocol demo\n  python -m bench solvers\n  python -m bench plan "
                                        "--protocol table1 --device cuda\n  python -m bench <command> --help")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a protocol (resumable; recomputes stale records)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=RUN_EXAMPLES)
    _selection_args(r)
    r.add_argument("--limit", type=int, help="first N images of each dataset")
    r.add_argument("--batch-size", metavar="N|NAME=N,...",
                   help="images per batch for every dataset, or per dataset (ffhq=8,imagenet=2); default: the "
                        "protocol's; never changes a number; halved automatically when out of memory")
    r.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available; under torchrun cuda:LOCAL_RANK)")
    r.add_argument("--threads", type=int, help="CPU threads (default: 1 for images <= 64 px on CPU, else torch's)")
    r.add_argument("--rerun", choices=RERUN_CHOICES, default="stale",
                   help="stale (default): compute missing records and those made by other code; errors: also "
                        "rerun 'error' records; all: recompute everything")
    r.add_argument("--retry-errors", action="store_true", help="same as --rerun errors")
    _speed_args(r)
    r.set_defaults(func=cmd_run)
    t = sub.add_parser("table", help="write the tables and grids from the records",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=TABLE_EXAMPLES)
    _selection_args(t)
    _speed_args(t)
    t.add_argument("--all-configs", action="store_true",
                   help="also show every other configuration / code version in the store as labelled rows")
    t.add_argument("--fid", action="store_true",
                   help="also FID/KID over each cell's image set (needs the protocol's `set_metrics` outputs and the "
                        "Inception weights: make checkpoints NAMES=inception)")
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
    k = sub.add_parser("check-solver", help="run the solver contract tests on your own solver class",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=CHECK_SOLVER_EXAMPLES)
    k.add_argument("solver", metavar="MODULE:CLASS",
                   help="your Solver subclass: importable module (from the current folder or PYTHONPATH) or "
                        "path/to/file.py, then :ClassName")
    k.add_argument("--prior", default="gaussian",
                   help="prior to check on: gaussian (exact, default) or module:function(image_size=...)")
    k.add_argument("--tasks", help="comma-separated tasks (default: the Table 1 tasks "
                                   "inpaint_random,deblur_gaussian,deblur_motion,sr4); unsupported ones are skipped")
    k.add_argument("--image-size", type=int, default=32, help="image side in pixels (default 32)")
    k.add_argument("--full", action="store_true",
                   help="use the solver's own settings instead of its class `smoke` overrides (slower)")
    k.set_defaults(func=cmd_check_solver)
    v = sub.add_parser("solvers", help="list the registered solvers: tasks, budget, hyper-parameters and sources",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SOLVERS_EXAMPLES)
    v.add_argument("names", nargs="*", metavar="NAME",
                   help="show these solvers in full (per-task and per-dataset values); default: all, in brief")
    v.add_argument("--import", dest="imports", action="append", metavar="MODULE",
                   help="import a module (dotted name or .py path) that defines solvers first; repeatable")
    v.set_defaults(func=cmd_solvers)
    o = sub.add_parser("tasks", help="list the operator tasks: parameters, defaults, linear, svd/pinv/prox",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  python -m bench tasks")
    o.set_defaults(func=cmd_tasks)
    pl = sub.add_parser("plan", help="projected hours and memory of a protocol on this device",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=PLAN_EXAMPLES)
    _selection_args(pl, results=False)
    pl.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    pl.add_argument("--batch-size", metavar="N|NAME=N,...",
                    help="images per batch for every dataset, or per dataset (ffhq=8,imagenet=2); default: the "
                         "dataset's, else the protocol's")
    _speed_args(pl)
    pl.add_argument("--limit", type=int, help="first N images of each dataset (as bench run --limit)")
    pl.add_argument("--random-weights", action="store_true",
                    help="time registered networks with random weights when their checkpoint is missing "
                         "(same architecture, same cost)")
    pl.add_argument("--quick", action="store_true",
                    help="time the network at batch 1 and scale linearly to the batch size (fast; an upper "
                         "bound on GPU time)")
    pl.add_argument("--repeats", type=int, help="timed calls per measurement after a warm-up (default 3; median)")
    pl.add_argument("--threads", type=int, help="CPU threads (default: as bench run)")
    pl.add_argument("--no-measure", action="store_true", help="images and NFE only, no timing")
    pl.add_argument("--out", help="also write the (markdown) plan to this file")
    pl.set_defaults(func=cmd_plan)
    for module in COMMAND_MODULES:  # each defines add_parser(sub) and sets func via set_defaults
        importlib.import_module(module).add_parser(sub)
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
    except Exception as err:  # noqa: BLE001 - user-fixable errors of the lower layers, without a traceback
        user_errors = tuple(getattr(sys.modules.get(module), cls, None) for module, cls in (
            ("solvers.base", "SolverError"), ("priors.registry", "CheckpointError"),
            ("operators.base", "OperatorError")))
        if not isinstance(err, tuple(c for c in user_errors if isinstance(c, type))):
            raise
        print("error: " + " ".join(str(err).split("\n")), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; stored records are kept, rerun the same command to resume", file=sys.stderr)
        return 130
