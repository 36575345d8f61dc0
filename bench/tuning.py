"""The tuned hyper-parameter layer: solvers/configs/tuned/<protocol>.yaml, written by `bench sweep`.

    # protocol demo: hyper-parameters tuned by `python -m bench sweep` on the validation split
    dps:                              # the protocol's solver entry (table row)
      demo:                           # dataset
        inpaint_random:               # task
          zeta: {value: 0.41, source: "sweep: datasets/demo_validation.json (4 images), objective psnr, ..."}

It is used only by a protocol that says `tuning: tuned`: for each cell the layer's values go between the
solver's YAML layers and the protocol entry's own overrides (which still win), each keeps its "sweep: ..."
source, and the cell's configuration records `tuning: tuned` (so its config hash differs from the published
one and the table footer names the rows that used tuned values).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from bench.errors import BenchError

REPO_ROOT = Path(__file__).resolve().parents[1]
TUNED_DIR = REPO_ROOT / "solvers" / "configs" / "tuned"
TUNING_CHOICES = ("published", "tuned")


def layer_path(protocol_name: str, directory: Path | None = None) -> Path:
    return (directory or TUNED_DIR) / f"{protocol_name}.yaml"


def shown(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def load_layer(protocol_name: str, directory: Path | None = None) -> dict[str, Any]:
    """The parsed tuned layer of a protocol ({} when there is none); BenchError when malformed."""
    path = layer_path(protocol_name, directory)
    if not path.is_file():
        return {}
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise BenchError(f"{shown(path)}: not valid YAML ({' '.join(str(err).split())[:200]}); rerun "
                         f"`python -m bench sweep` or fix the file") from None
    if not isinstance(raw, dict):
        raise BenchError(f"{shown(path)}: expected entry -> dataset -> task -> key -> {{value, source}}")
    return raw


def tuned_values(protocol_name: str, entry: str, dataset: str, task: str,
                 directory: Path | None = None) -> dict[str, dict[str, Any]]:
    """{key: {value, source}} of one cell ({} when the layer has nothing for it)."""
    layer = load_layer(protocol_name, directory)
    cell = ((layer.get(entry) or {}).get(dataset) or {}).get(task) or {}
    for key, v in cell.items():
        if not isinstance(v, dict) or "value" not in v or "source" not in v:
            raise BenchError(f"{shown(layer_path(protocol_name, directory))}: {entry}.{dataset}.{task}.{key} must be "
                             f"{{value: ..., source: ...}}")
    return dict(cell)


def update_layer(protocol_name: str, values: dict[tuple[str, str, str], dict[str, dict[str, Any]]],
                 header: str = "", directory: Path | None = None) -> Path:
    """Merge {(entry, dataset, task): {key: {value, source}}} into the protocol's layer (other cells kept)
    and write it atomically; returns its path."""
    import fcntl
    path = layer_path(protocol_name, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    # sweeps of different solvers may run as parallel processes: one read-modify-write at a time
    import os
    fd = os.open(path.parent, os.O_RDONLY)  # a lock on the folder: no lock file left behind
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        layer = load_layer(protocol_name, directory)
        for (entry, dataset, task), keys in values.items():
            layer.setdefault(entry, {}).setdefault(dataset, {})[task] = dict(keys)
        _write_layer(path, protocol_name, layer, header)
    finally:
        os.close(fd)
    return path


def _write_layer(path: Path, protocol_name: str, layer: dict[str, Any], header: str) -> None:
    from common.fileio import atomic_write_text
    lines = [f"# protocol {protocol_name}: hyper-parameters tuned by `python -m bench sweep` on validation splits",
             "# (bench/splits.py), used only by a protocol with `tuning: tuned` (bench/tuning.py). Written by code;",
             "# rerun the sweep rather than editing values by hand."]
    lines += [f"# {h}" for h in header.splitlines() if h.strip()]
    for entry in sorted(layer):
        lines.append(f"{entry}:")
        for dataset in sorted(layer[entry] or {}):
            lines.append(f"  {dataset}:")
            for task in sorted(layer[entry][dataset] or {}):
                lines.append(f"    {task}:")
                for key, v in sorted((layer[entry][dataset][task] or {}).items()):
                    lines.append(f"      {key}: {{value: {json.dumps(v['value'])}, source: {json.dumps(str(v['source']))}}}")
    atomic_write_text(path, "\n".join(lines) + "\n")
