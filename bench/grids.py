"""Qualitative grids: grid_<dataset>_<task>.png from the images the runner kept.

The runner saves, for the first `grid_images` images of each dataset x task, the ground truth
(`_gt`), the measurement shown at image size (`_y`; nearest-neighbour upscaled for SR, A^T y when the
measurement is not image-shaped) and every method's output under
results/<protocol>/images/<dataset>/<task>/<column>/<image id>.png. A grid has one row per image
and the columns ground truth, measurement, then the methods in table order, each labelled.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from common.fileio import atomic_write

LABEL_HEIGHT = 14
MIN_CELL = 96  # pixels


def write_grids(results_dir: Path, methods: list[tuple[str, str]], out_dir: Path | None = None) -> list[Path]:
    root = Path(results_dir) / "images"
    out_dir = Path(out_dir or results_dir)
    written = []
    if not root.is_dir():
        return written
    for ds_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for task_dir in sorted(p for p in ds_dir.iterdir() if p.is_dir()):
            present = {p.name for p in task_dir.iterdir() if p.is_dir()}
            columns = [("_gt", "truth"), ("_y", "measured")]
            columns = [c for c in columns if c[0] in present]
            known = [m for m, _ in methods]
            columns += [(m, lab) for m, lab in methods if m in present]
            columns += [(m, m) for m in sorted(present) if m not in known and not m.startswith("_")]
            ids = sorted({p.stem for p in (task_dir / "_gt").glob("*.png")}) if "_gt" in present else []
            if not ids:
                continue
            path = out_dir / f"grid_{ds_dir.name}_{task_dir.name}.png"
            grid = _grid(task_dir, columns, ids)
            atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))
            written.append(path)
    return written


def _grid(task_dir: Path, columns: list[tuple[str, str]], ids: list[str]) -> Image.Image:
    with Image.open(task_dir / "_gt" / f"{ids[0]}.png") as first:
        w0, h0 = first.size
    zoom = max(1, MIN_CELL // w0)  # tiny images are enlarged (nearest) so the grid stays readable
    w, h = w0 * zoom, h0 * zoom
    cell_w = max(w, 64)
    canvas = Image.new("RGB", (cell_w * len(columns), LABEL_HEIGHT + h * len(ids)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for c, (col, label) in enumerate(columns):
        short = label.replace("oracle: exact posterior ", "oracle ")
        draw.text((c * cell_w + 2, 1), short[: max(4, cell_w // 6)], fill="black", font=font)
        for r, image_id in enumerate(ids):
            p = task_dir / col / f"{image_id}.png"
            if p.exists():
                with Image.open(p) as im:
                    tile = im.convert("RGB").resize((w, h), Image.Resampling.NEAREST)
                    canvas.paste(tile, (c * cell_w, LABEL_HEIGHT + r * h))
    return canvas
