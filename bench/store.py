"""Append-only result store: results/<protocol>/records/<writer>.jsonl + configs.jsonl.

One record per (dataset, image, task, solver, seed, config hash): metrics, NFE, cost, status. A
record carries only the `config_hash`; the full configuration behind each hash (protocol entries of
the cell, resolved solver parameters, operator description, prior identity, metric card) is stored
once in `configs/<writer>.jsonl`. Each process writes its own files (one per rank), so shards never
contend; `load()` merges every file.

Record fields: dataset, image_id, task, solver, seed (protocol seed), config_hash, image_sha256 (of
the image file used), status (ok | diverged | unsupported | error), message, psnr, ssim, lpips (null
unless ok), nfe_forward, nfe_backward (network evaluations per image, counted by the prior), seconds
(per image = batch wall time / batch size), peak_mem_mb (of the batch: torch.cuda.max_memory_allocated
on GPU, growth of the process RSS high-water mark on CPU), batch_size, device, code_version (git
describe, else the package version), time (UTC, informative only).

Crash safety: a batch of records is appended with one write, flushed and fsynced. A crash can leave
at most one partial last line; readers ignore a trailing line that does not parse, and a writer cuts
it off before appending. So a rerun loses at most the batch in flight.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

RECORD_FIELDS = ("dataset", "image_id", "task", "solver", "seed", "config_hash", "image_sha256", "status",
                 "message", "psnr", "ssim", "lpips", "nfe_forward", "nfe_backward", "seconds", "peak_mem_mb",
                 "batch_size", "device", "code_version")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)


def record_key(r: dict) -> tuple:
    """Identity of a record: a rerun with the same key skips the work."""
    return (r["dataset"], r["image_id"], r["task"], r["solver"], r["seed"], r["config_hash"], r["image_sha256"])


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i >= len(lines) - 2:  # a torn last line from a crash: ignore it
                continue
            raise ValueError(f"{path}: line {i + 1} is not valid JSON (the store was edited by hand?)") from None
    return out


def _repair_tail(path: Path) -> None:
    """Cut a partial (unterminated) last line left by a crash, so appends start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        f.truncate(cut)


def _append(path: Path, rows: Iterable[dict]) -> None:
    text = "".join(_dumps(r) + "\n" for r in rows)
    if not text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _repair_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


class Store:
    def __init__(self, directory: str | Path, writer: str = "rank0") -> None:
        self.dir = Path(directory)
        self.writer = writer
        self.records_path = self.dir / "records" / f"{writer}.jsonl"
        self.configs_path = self.dir / "configs" / f"{writer}.jsonl"
        self._known_configs: set[str] | None = None

    # ------------------------------------------------------------------ writing
    def add_config(self, config_hash: str, config: dict) -> None:
        if self._known_configs is None:
            self._known_configs = set(load_configs(self.dir))
        if config_hash not in self._known_configs:
            _append(self.configs_path, [{"config_hash": config_hash, "config": config}])
            self._known_configs.add(config_hash)

    def append(self, records: list[dict]) -> None:
        _append(self.records_path, records)

    # ------------------------------------------------------------------ reading
    def done_keys(self, retry_errors: bool = False) -> set[tuple]:
        return {record_key(r) for r in load_records(self.dir)
                if not (retry_errors and r["status"] == "error")}


def load_records(directory: str | Path) -> list[dict]:
    """Every record of a results folder (all writers), one per key: a later 'ok' supersedes a failure."""
    best: dict[tuple, dict] = {}
    rank = {"ok": 3, "diverged": 2, "unsupported": 2, "error": 1}
    for path in sorted((Path(directory) / "records").glob("*.jsonl")):
        for r in _read_jsonl(path):
            k = record_key(r)
            if k not in best or rank.get(r["status"], 0) >= rank.get(best[k]["status"], 0):
                best[k] = r
    return [best[k] for k in sorted(best)]


def load_configs(directory: str | Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for path in sorted((Path(directory) / "configs").glob("*.jsonl")):
        for row in _read_jsonl(path):
            out[row["config_hash"]] = row["config"]
    return out
