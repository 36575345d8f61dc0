"""User-facing errors of the harness: the CLI prints the message and exits with status 2, no traceback."""
from __future__ import annotations


class BenchError(Exception):
    """A problem the user can fix (missing data or checkpoint, bad protocol key, corrupt image)."""
