"""Append-only result store: results/<protocol>/records/<writer>.jsonl + configs.jsonl.

One record per (dataset, image, task, solver, seed, config hash): metrics, NFE, cost, status. A
record carries only the `config_hash`; the full configuration behind each hash (protocol entries of
the cell, resolved solver parameters, operator description, prior identity, metric card) is stored
once in `configs/<writer>.jsonl`, and so is the list of files behind each code fingerprint. Each process
writes its own files, named by rank, host, process id and launch time (`writer_name()`), so shards, a
second launch into the same folder and a plain run beside torchrun never share a file; a writer only ever
repairs the tail of its own file. `load_records()` merges every file.

Record fields: dataset, image_id, task, solver, seed (protocol seed), config_hash, image_sha256 (of
the image file used), status (ok | diverged | unsupported | error), message, psnr, ssim, lpips (null
unless ok), nfe_forward, nfe_backward (network evaluations per image, counted by the prior), seconds
(per image = batch wall time / batch size), peak_mem_mb (of the batch: torch.cuda.max_memory_allocated
on GPU, growth of the process RSS high-water mark on CPU), batch_size, device, code_version (git
describe, else the package version; "-dirty" only when code, not results, is modified), fingerprint
(bench/fingerprint.py: the code that made the record), solver_class (the registered solver an entry
runs), time (UTC, informative only).

A record with the same key but another fingerprint is *stale*: the runner recomputes it (`--rerun
stale`, the default) and the tables never average records of different configurations or
fingerprints (see bench/tables.py).

Crash safety: a batch of records is appended with one write, flushed and fsynced. A crash can leave
at most one partial last line; readers ignore a trailing line that does not parse, and a writer cuts
it off before appending. So a rerun loses at most the batch in flight.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterable

RECORD_FIELDS = ("dataset", "image_id", "task", "solver", "seed", "config_hash", "image_sha256", "status",
                 "message", "psnr", "ssim", "lpips", "nfe_forward", "nfe_backward", "seconds", "peak_mem_mb",
                 "batch_size", "device", "code_version", "fingerprint")


#: which stored records a rerun recomputes: stale (made by other code; and missing ones, always), errors
#: (also 'error' records), all (every record)
RERUN_CHOICES = ("stale", "errors", "all")


def writer_name(rank: int) -> str:
    """A file name no other process uses: rank, host, pid and launch time (ms)."""
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:40] or "host"
    return f"rank{rank}-{host}-{os.getpid()}-{int(time.time() * 1000)}"


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
        self._known_fingerprints: set[str] | None = None

    # ------------------------------------------------------------------ writing
    def add_config(self, config_hash: str, config: dict) -> None:
        if self._known_configs is None:
            self._known_configs = set(load_configs(self.dir))
        if config_hash not in self._known_configs:
            _append(self.configs_path, [{"config_hash": config_hash, "config": config}])
            self._known_configs.add(config_hash)

    def add_fingerprint(self, digest: str, files: dict[str, str]) -> None:
        if self._known_fingerprints is None:
            self._known_fingerprints = set(load_fingerprints(self.dir))
        if digest not in self._known_fingerprints:
            _append(self.configs_path, [{"fingerprint": digest, "files": files}])
            self._known_fingerprints.add(digest)

    def append(self, records: list[dict]) -> None:
        _append(self.records_path, records)

    # ------------------------------------------------------------------ reading

_STATUS_RANK = {"ok": 3, "diverged": 2, "unsupported": 2, "error": 1}


def _written_order(path: Path) -> tuple:
    """Writers in launch order (the launch time in the name), then by name."""
    parts = path.stem.split("-")
    stamp = int(parts[-1]) if len(parts) >= 4 and parts[-1].isdigit() else 0
    return (stamp, path.name)


def load_records(directory: str | Path, all_versions: bool = False) -> list[dict]:
    """The records of a results folder (all writers). One per key and fingerprint (a later record of the same
    code supersedes an earlier one unless it is a worse status: a later 'ok' supersedes a failure, an
    'error' never hides an 'ok'). Unless `all_versions`, one per key: the most recently written fingerprint
    (the current code's records after a rerun; older fingerprints are stale)."""
    best: dict[tuple, dict] = {}
    order: dict[tuple, int] = {}
    n = 0
    for path in sorted((Path(directory) / "records").glob("*.jsonl"), key=_written_order):
        for r in _read_jsonl(path):
            n += 1
            k = record_key(r) + (r.get("fingerprint"),)
            if k not in best or _STATUS_RANK.get(r["status"], 0) >= _STATUS_RANK.get(best[k]["status"], 0):
                best[k] = r
            order[k] = n
    if not all_versions:
        latest: dict[tuple, tuple] = {}
        for k in best:
            if k[:-1] not in latest or order[k] > order[latest[k[:-1]]]:
                latest[k[:-1]] = k
        best = {k: best[k] for k in latest.values()}
    return [best[k] for k in sorted(best, key=lambda k: tuple("" if v is None else str(v) for v in k))]


def load_configs(directory: str | Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for path in sorted((Path(directory) / "configs").glob("*.jsonl")):
        for row in _read_jsonl(path):
            if "config_hash" in row:
                out[row["config_hash"]] = row["config"]
    return out


def load_fingerprints(directory: str | Path) -> dict[str, dict[str, str]]:
    """Code fingerprint -> {file: sha256} for every fingerprint a record of this folder carries."""
    out: dict[str, dict[str, str]] = {}
    for path in sorted((Path(directory) / "configs").glob("*.jsonl")):
        for row in _read_jsonl(path):
            if "fingerprint" in row:
                out[row["fingerprint"]] = row["files"]
    return out
