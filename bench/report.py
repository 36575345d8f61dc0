"""`python -m bench report`: a static, self-contained HTML report of a results folder (Jinja2).

results/<protocol>/report/index.html opens from disk (no server, no network, no external script or font):

* the paper-layout tables (one per dataset, rows = methods, PSNR / SSIM / LPIPS per task; best bold, second
  underlined, as table1.md), sortable by clicking a column header;
* the cost table (NFE forward / backward, seconds and peak memory per image) and, when `bench table` wrote
  them, FID / KID (table1_fid.csv, bench/fid.py);
* the metric card and conventions (the tables' footer: metric definitions, noise, prior, seeds, code);
* the figures (every PNG under results/<protocol>/figures/, written by bench/figures.py) and the grids;
* a per-image view: one row per (dataset, task, image); clicking it shows the ground truth, the measurement
  and every method's output side by side with that image's PSNR / SSIM / LPIPS, and failures with their message.

The numbers come from the records alone, with the same row selection as `bench table` (bench/variants.py:
one configuration made by one version of the code per row). Images are referenced as files relative to
the report (nothing is copied or embedded; only files that exist are referenced): the grid images
(images/<dataset>/<task>/<column>/<id>.png, the first `grid_images` images of each dataset x task) and, for
a protocol with `set_metrics`, every output (outputs/..., bench/fid.py). Other images show their metrics
only. Size: the page itself holds the per-image numbers, ~70 bytes per image x cell (1500 images x 40 cells:
~4 MB of HTML, built in ~10 s); images stay where the runner wrote them (at 256x256 an 8-bit PNG is ~100-200 KB, so all
outputs of 1500 images x 40 cells are ~6-12 GB, which is why only grid images are kept by default).
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import tables
from bench.variants import select_rows
from common.fileio import atomic_write_text

TEMPLATE = "report.html.j2"
REPORT_DIR = "report"


@dataclass
class Column:
    key: str
    label: str


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))) else float(x)


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _quality_tables(cells: dict, layout: tables.Layout) -> list[dict]:
    methods = [m for m, _ in layout.methods]
    out = []
    for ds, ds_label in layout.datasets:
        n_images = len({i for (d, _, _), c in cells.items() if d == ds for i in c.images})
        ranks = {(t, m): tables._ranks(cells, ds, t, methods, m, layout.unranked)
                 for t, _ in layout.tasks for m in tables.METRICS}
        rows = []
        for method, label in layout.methods:
            if not any((ds, t, method) in cells for t, _ in layout.tasks):
                continue
            values = []
            for t, _ in layout.tasks:
                c = cells.get((ds, t, method))
                for m in tables.METRICS:
                    text = tables._cell_text(c, m, None, ("", ""), ("", ""), m == "psnr")
                    sort = _num(c.mean[m]) if c is not None and c.n_ok else None
                    values.append({"text": text, "sort": sort, "rank": ranks[(t, m)].get(method)})
            rows.append({"id": method, "label": label, "oracle": method in tables.ORACLE_LABELS, "cells_": values})
        out.append({"name": ds, "label": ds_label, "n_images": n_images, "rows": rows})
    return out


def _cost_tables(cells: dict, layout: tables.Layout) -> list[dict]:
    out = []
    for ds, ds_label in layout.datasets:
        rows = []
        for method, label in layout.methods:
            values, any_cell = [], False
            for t, _ in layout.tasks:
                c = cells.get((ds, t, method))
                if c is None or c.n_ok == 0:
                    values += [{"text": "–", "sort": None}] * 4
                    continue
                any_cell = True
                for key, fmt in (("nfe_forward", tables._nfe), ("nfe_backward", tables._nfe),
                                 ("seconds", lambda v: f"{v:.3g}"), ("peak_mem_mb", lambda v: f"{v:.0f}")):
                    v = c.mean[key]
                    values.append({"text": "–" if math.isnan(v) else fmt(v), "sort": _num(v)})
            if any_cell:
                rows.append({"label": label, "cells_": values})
        out.append({"name": ds, "label": ds_label, "rows": rows})
    return out


def _set_metric_rows(results_dir: Path, labels: dict[str, str]) -> list[dict]:
    path = results_dir / f"{tables.TABLE_STEM}_fid.csv"
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            fid = float(r["fid"]) if r["fid"] else None
            kid = float(r["kid_mean"]) * 1000 if r["kid_mean"] else None
            kid_std = float(r["kid_std"]) * 1000 if r["kid_std"] else None
            rows.append({"dataset": r["dataset"], "task": r["task"], "label": labels.get(r["method"], r["method"]),
                         "n": r["n_fake"] if r["n_fake"] == r["n_real"] else f"{r['n_fake']}/{r['n_real']}",
                         "fid": fid, "kid": kid, "kid_std": kid_std, "problem": r["problem"]})
    return rows


def _image_file(results_dir: Path, ds: str, task: str, column: str, image_id: str, config_hash: str | None,
                current: bool) -> Path | None:
    """The stored PNG of one output (or '_gt' / '_y'): by config hash under outputs/, else the grid image
    (images/ holds the latest run of an entry, so only for the row the protocol selects)."""
    from bench.fid import gt_dir, output_dir
    candidates = []
    if column == "_gt":
        candidates.append(gt_dir(results_dir, ds) / f"{image_id}.png")
    elif config_hash and not column.startswith("_"):
        candidates.append(output_dir(results_dir, ds, task, column, config_hash) / f"{image_id}.png")
    if current:
        candidates.append(results_dir / "images" / ds / task / column / f"{image_id}.png")
    return next((p for p in candidates if p.is_file()), None)


def _per_image(results_dir: Path, out_dir: Path, records: list[dict], layout: tables.Layout,
               base_method: dict[str, str], unranked: set[str]) -> tuple[list[dict], dict[str, Any]]:
    labels = dict(layout.methods)
    order = {m: i for i, (m, _) in enumerate(layout.methods)}
    tasks = dict(layout.tasks)
    datasets = dict(layout.datasets)
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["task"], r["image_id"]), []).append(r)
    ds_order = {d: i for i, (d, _) in enumerate(layout.datasets)}
    task_order = {t: i for i, (t, _) in enumerate(layout.tasks)}
    rows, detail = [], {}
    label_index = {label: i for i, label in enumerate(sorted({labels.get(r["solver"], r["solver"]) for r in records}))}
    for (ds, task, image_id) in sorted(groups, key=lambda k: (ds_order.get(k[0], 99), task_order.get(k[1], 99), k[2])):
        recs = sorted(groups[(ds, task, image_id)], key=lambda r: order.get(r["solver"], 999))
        key = f"{ds}/{task}/{image_id}"
        rel = lambda p: _rel(p, out_dir) if p is not None else None  # noqa: E731
        cells = []
        for r in recs:
            row = r["solver"]
            entry = base_method.get(row, row)
            image = _image_file(results_dir, ds, task, entry, image_id, r["config_hash"], row not in unranked)
            cells.append({"label": labels.get(row, row), "status": r["status"], "message": r.get("message") or "",
                          "psnr": _num(r.get("psnr")), "ssim": _num(r.get("ssim")), "lpips": _num(r.get("lpips")),
                          "image": rel(image) if r["status"] == "ok" else None})
        ok = [c for c in cells if c["status"] == "ok" and c["psnr"] is not None]
        ranked = [c for c, r in zip(cells, recs) if c in ok and r["solver"] not in tables.ORACLE_LABELS
                  and r["solver"] not in unranked]  # as the tables: oracles and other variants are not ranked
        best = max(ranked, key=lambda c: c["psnr"]) if ranked else None
        detail[key] = {"gt": rel(_image_file(results_dir, ds, task, "_gt", image_id, None, True)),
                       "y": rel(_image_file(results_dir, ds, task, "_y", image_id, None, True)),
                       "cells": [_compact(c, label_index) for c in cells]}
        rows.append({"key": key, "dataset": datasets.get(ds, ds), "task": tasks.get(task, task), "image_id": image_id,
                     "n_ok": len(ok), "n": len(cells), "failed": sum(c["status"] in ("error", "diverged") for c in cells),
                     "best": best["label"] if best else "–", "best_psnr": best["psnr"] if best else None,
                     "images": sum(c["image"] is not None for c in cells)})
    return rows, {"labels": sorted(label_index, key=label_index.get), "images": detail}


CELL_FIELDS = ("label", "status", "message", "psnr", "ssim", "lpips", "image")  # one array per cell in the page


def _compact(cell: dict, label_index: dict[str, int]) -> list:
    """A cell as an array (CELL_FIELDS order; label by index, numbers rounded for display): ~60 bytes."""
    r = lambda v, d: None if v is None else round(v, d)  # noqa: E731
    return [label_index[cell["label"]], cell["status"], cell["message"], r(cell["psnr"], 3), r(cell["ssim"], 4),
            r(cell["lpips"], 4), cell["image"]]


def _json_for_script(obj: Any) -> str:
    """JSON safe inside <script type="application/json"> (no '</script>' can close it)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c").replace(">", "\\u003e")


def _card(footer_md: str) -> list[str]:
    """The tables' footer (markdown bullets) as plain lines, sub-bullets joined to their parent."""
    lines: list[str] = []
    for line in footer_md.splitlines():
        if line.startswith("- "):
            lines.append(line[2:])
        elif line.startswith("  - ") and lines:
            lines[-1] += (" " if lines[-1].endswith(":") else "; ") + line[4:]
    return lines


def build(results_dir: Path, records: list[dict], configs: dict[str, dict], layout: tables.Layout, title: str,
          selection: dict | None = None, fingerprints: dict | None = None, description: str = "",
          out_dir: Path | None = None, all_configs: bool = False) -> Path:
    """Write `<out_dir or results_dir/report>/index.html` from every record of the store; returns its path.

    `selection` / `all_configs` as `bench table` (bench/tables.py `write`): the rows the current protocol and
    code ask for, other variants listed (or, with `all_configs`, shown as labelled rows)."""
    import jinja2

    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir / REPORT_DIR
    labels = dict(layout.methods)
    rows = select_rows(records, configs, selection or None, all_configs, fingerprints, labels)
    base = tables.Layout(layout.datasets, layout.tasks, tables._with_extra(layout.methods, rows),
                         layout.unranked | rows.unranked)
    shown = rows.records
    full = base.complete(shown)
    cells = tables.aggregate(shown)
    footer = tables.footer(shown, configs, rows.notes, None, dict(full.methods))
    per_image_rows, detail = _per_image(results_dir, out_dir, shown, full, rows.base_method, full.unranked)
    figures = sorted((results_dir / "figures").rglob("*.png")) if (results_dir / "figures").is_dir() else []
    grids = sorted(results_dir.glob("grid_*.png"))
    set_rows = _set_metric_rows(results_dir, {**labels, **dict(rows.methods)})
    from bench.fid import card as fid_card
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    html = env.get_template(TEMPLATE).render(
        title=title, description=description, tasks=full.tasks, metrics=tables.METRICS, arrows=tables.ARROW,
        quality=_quality_tables(cells, full), cost=_cost_tables(cells, full), set_rows=set_rows,
        fid_card=fid_card() if set_rows else {}, card=_card(footer),
        figures=[{"src": _rel(p, out_dir), "name": p.stem} for p in figures],
        grids=[{"src": _rel(p, out_dir), "name": p.stem.removeprefix("grid_")} for p in grids],
        per_image=per_image_rows, detail_json=_json_for_script(detail),
        n_records=len(shown), versions=sorted({r.get("code_version", "?") for r in shown}))
    return atomic_write_text(out_dir / "index.html", html)
