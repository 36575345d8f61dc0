"""`python -m bench report --protocol NAME [--results DIR] [--out DIR]`: the static HTML report (bench/report.py)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


EXAMPLES = """examples:
  python -m bench report --protocol demo --results results/demo-local   # then open .../report/index.html
  python -m bench report --protocol table1 --set spgd.lr=2.0            # the report of that configuration
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from bench.cli import _selection_args, _speed_args
    r = sub.add_parser("report", help="write a static HTML report (tables, cost, metric card, figures, grids, "
                                      "per-image view) to results/<protocol>/report/index.html",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    _selection_args(r)
    _speed_args(r)
    r.add_argument("--all-configs", action="store_true",
                   help="also show every other configuration / code version in the store as labelled rows")
    r.add_argument("--out", help="report folder (default: <results>/report)")
    r.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from bench import report, store, tables
    from bench.cli import stored_results
    p, out, records, selection = stored_results(args)
    path = report.build(out, records, store.load_configs(out), tables.Layout.from_protocol(p),
                        f"{p.name}: {p.description}" if p.description else p.name,
                        selection=selection.cells or None,
                        fingerprints={**store.load_fingerprints(out), **selection.files},
                        out_dir=Path(args.out) if args.out else None, all_configs=args.all_configs)
    shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
    print(f"report written: open {shown} in a browser (a static page, no server needed)")
    return 0
