"""Check, before any work, that the results folder can be created and written."""
from __future__ import annotations

import errno
import os
from pathlib import Path

from bench.errors import BenchError

FIX = "choose another with --results DIR or RESTOREBENCH_RESULTS"


def check_results_dir(path: Path, create: bool = True) -> Path:
    """`path`, created if missing (`create`), after writing and removing a probe file in it.

    A path that is a file, sits under a file, cannot be created or cannot be written gives a
    one-line BenchError naming the folder, the reason and the fix. With `create=False` a missing
    folder is returned unchecked (`bench table` reports "no records" for it).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        _fail(path, "it is a file, not a folder")
    if not path.exists():
        if not create:
            return path
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            _fail(path, "a file is in the way")
        except OSError as err:
            _fail(path, _reason(err))
    probe = path / f".write-probe-{os.getpid()}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as err:
        _fail(path, _reason(err))
    return path


def _reason(err: OSError) -> str:
    if isinstance(err, NotADirectoryError) or err.errno == errno.ENOTDIR:
        return "a parent of it is a file"
    return err.strerror or type(err).__name__


def _fail(path: Path, reason: str) -> None:
    raise BenchError(f"results folder {path} is not writable ({reason}): {FIX}")
