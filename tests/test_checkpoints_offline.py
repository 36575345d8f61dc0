"""`bench checkpoints` without network: a DNS failure or a refused connection fails at once, in one line;
only what can pass (timeouts, resets, 5xx) is retried."""
from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest

from priors import checkpoints
from priors.checkpoints import fetch_file, permanent_failure
from priors.registry import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
SLOW = {"timeout": 5.0, "max_attempts": 8, "backoff": 30.0}  # a retry would sleep 30 s: the test would hang


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_sleep_allowed(monkeypatch):
    def forbidden(seconds):
        raise AssertionError(f"retried (slept {seconds} s) an error that cannot pass")
    monkeypatch.setattr(checkpoints.time, "sleep", forbidden)


def test_connection_refused_fails_without_retry(tmp_path, monkeypatch):
    _no_sleep_allowed(monkeypatch)
    port = _unused_port()
    with pytest.raises(CheckpointError) as err:
        fetch_file(f"http://127.0.0.1:{port}/m.pt", tmp_path / "m.pt", progress=False, **SLOW)
    assert str(err.value) == (f"connection to 127.0.0.1:{port} refused: nothing serves that address; check the "
                              f"link or proxy and run again; or download http://127.0.0.1:{port}/m.pt by hand to "
                              f"{tmp_path / 'm.pt'}")


def test_dns_failure_fails_without_retry(tmp_path, monkeypatch):
    _no_sleep_allowed(monkeypatch)
    with pytest.raises(CheckpointError, match=r"^cannot resolve host nonexistent.invalid \(.*\): no network or DNS"):
        fetch_file("http://nonexistent.invalid/m.pt", tmp_path / "m.pt", progress=False, **SLOW)


def test_what_is_retried_and_what_is_not(tmp_path):
    part = tmp_path / "m.pt.part"
    url = "https://example.org/m.pt"
    permanent = [urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution")),
                 urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
                 urllib.error.URLError(OSError(101, "Network is unreachable")),
                 OSError(28, "No space left on device", str(part))]
    transient = [urllib.error.URLError(TimeoutError("timed out")), TimeoutError("timed out"),
                 ConnectionResetError(104, "Connection reset by peer"), http.client.RemoteDisconnected("closed"),
                 http.client.IncompleteRead(b"abc", 10), checkpoints._Incomplete("short"),
                 urllib.error.URLError(ConnectionResetError(104, "reset"))]
    assert all(permanent_failure(e, url, part) for e in permanent)
    assert [permanent_failure(e, url, part) for e in transient] == [None] * len(transient)
    assert "cannot write" in permanent_failure(permanent[-1], url, part)


def test_cli_fails_fast_in_one_line(tmp_path):
    env = {**os.environ, "RESTOREBENCH_CHECKPOINTS": str(tmp_path)}
    for url, start in ((f"http://127.0.0.1:{_unused_port()}/x.pt", "error: connection to 127.0.0.1:"),
                       ("http://nonexistent.invalid/x.pt", "error: cannot resolve host nonexistent.invalid")):
        proc = subprocess.run([sys.executable, "-m", "bench", "checkpoints", "ffhq256", "--url", url, "--no-progress"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith(start), proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout and not (tmp_path / "ffhq_10m.pt").exists()
