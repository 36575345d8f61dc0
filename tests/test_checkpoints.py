"""Checkpoint downloader (priors/checkpoints.py) against a local HTTP server on 127.0.0.1."""
from __future__ import annotations

import hashlib
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from priors import checkpoints
from priors.checkpoints import confirm_url_from_html, download, fetch_file, gdrive_direct_url, main
from priors.registry import CheckpointError

PAYLOAD = os.urandom(1) + bytes(range(256)) * 300  # 76 801 bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()
FAST = {"timeout": 5.0, "max_attempts": 4, "backoff": 0.0, "chunk_size": 4096}

GDRIVE_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="/usercontent/download" method="get">
<input type="submit" value="Download anyway"/>
<input type="hidden" name="id" value="FILEID"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="abc-123"></form>
</body></html>"""


class Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD with Range support; modes are set per test on the server object."""

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        path = urllib.parse.urlparse(self.path)
        if path.path == "/gdrive":
            return self._send(200, GDRIVE_PAGE.encode(), "text/html; charset=utf-8")
        if path.path == "/usercontent/download":
            query = dict(urllib.parse.parse_qsl(path.query))
            if query != {"id": "FILEID", "export": "download", "confirm": "t", "uuid": "abc-123"}:
                return self._send(403, b"bad confirm", "text/plain")
        elif path.path == "/quota":
            return self._send(200, b"<html>Quota exceeded</html>", "text/html")
        elif path.path != "/file.pt":
            return self._send(404, b"not found", "text/plain")
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
        if srv.fail_always:
            return self._send(503, b"busy", "text/plain")
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.end_headers()
        if srv.cut_next:  # announce everything, send a third, drop the connection
            srv.cut_next = False
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _send(self, code, body, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.requests, srv.cut_next, srv.fail_always = [], False, False
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def test_resume_after_interrupted_download(server, tmp_path):
    server.cut_next = True
    dest = tmp_path / "model.pt"
    assert fetch_file(server.url + "/file.pt", dest, sha256=SHA, progress=False, **FAST) == dest
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "model.pt.part").exists()
    (first, r1), (second, r2) = server.requests
    assert r1 is None and r2 == f"bytes={len(PAYLOAD) // 3}-"


def test_resume_from_existing_part_file(server, tmp_path):
    dest = tmp_path / "model.pt"
    (tmp_path / "model.pt.part").write_bytes(PAYLOAD[:1000])
    fetch_file(server.url + "/file.pt", dest, size=len(PAYLOAD), sha256=SHA, progress=True, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/file.pt", "bytes=1000-")]


def test_hash_mismatch_removes_download(server, tmp_path):
    dest = tmp_path / "model.pt"
    with pytest.raises(CheckpointError, match=f"sha256 {SHA}, expected {'a' * 64}"):
        fetch_file(server.url + "/file.pt", dest, sha256="a" * 64, progress=False, **FAST)
    assert not dest.exists() and not (tmp_path / "model.pt.part").exists()


def test_size_mismatch(server, tmp_path):
    with pytest.raises(CheckpointError, match=f"gave {len(PAYLOAD)} bytes, expected {len(PAYLOAD) + 1}"):
        fetch_file(server.url + "/file.pt", tmp_path / "m.pt", size=len(PAYLOAD) + 1, progress=False, **FAST)


def test_google_drive_confirm_page(server, tmp_path):
    dest = tmp_path / "ffhq.pt"
    fetch_file(server.url + "/gdrive", dest, sha256=SHA, progress=False, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert [p for p, _ in server.requests] == ["/gdrive", "/usercontent/download?id=FILEID&export=download&confirm=t&uuid=abc-123"]


def test_html_without_confirm_and_http_errors(server, tmp_path):
    with pytest.raises(CheckpointError, match="HTML page instead of the checkpoint"):
        fetch_file(server.url + "/quota", tmp_path / "a.pt", progress=False, **FAST)
    with pytest.raises(CheckpointError, match="HTTP 404"):
        fetch_file(server.url + "/missing.pt", tmp_path / "b.pt", progress=False, **FAST)
    assert len(server.requests) == 2  # client errors are not retried
    server.fail_always = True
    with pytest.raises(CheckpointError, match="failed after 4 attempts.*run the same command again"):
        fetch_file(server.url + "/file.pt", tmp_path / "c.pt", progress=False, **FAST)
    assert len(server.requests) == 2 + 4 and not (tmp_path / "c.pt").exists()


def test_confirm_url_variants():
    base = "https://drive.google.com/uc?export=download&id=XYZ"
    assert confirm_url_from_html(GDRIVE_PAGE, base) == (
        "https://drive.google.com/usercontent/download?id=FILEID&export=download&confirm=t&uuid=abc-123")
    old_link = '<a id="uc-download-link" href="/uc?export=download&amp;confirm=AbC_1&amp;id=XYZ">Download</a>'
    assert confirm_url_from_html(old_link, base) == "https://drive.google.com/uc?export=download&confirm=AbC_1&id=XYZ"
    assert confirm_url_from_html("var t = 'confirm=Q9z-';", base) == (
        "https://drive.google.com/uc?export=download&id=XYZ&confirm=Q9z-")
    assert confirm_url_from_html("<html>nothing here</html>", base) is None


def test_gdrive_direct_url():
    direct = "https://drive.google.com/uc?export=download&id=1BGwhRWUoguF-D8wlZ65tf227gp3cDUDh"
    assert gdrive_direct_url("https://drive.google.com/file/d/1BGwhRWUoguF-D8wlZ65tf227gp3cDUDh/view?usp=sharing") == direct
    assert gdrive_direct_url("https://drive.google.com/uc?id=1BGwhRWUoguF-D8wlZ65tf227gp3cDUDh") == direct
    assert gdrive_direct_url("http://127.0.0.1:80/x.pt") == "http://127.0.0.1:80/x.pt"
    with pytest.raises(CheckpointError, match="folder"):
        gdrive_direct_url("https://drive.google.com/drive/folders/1jElnRoFv7b31fG0v6pTSQkelbSX3xGZh?usp=sharing")


def test_download_by_name_and_cli(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(checkpoints, "fetch_file", _fast(checkpoints.fetch_file))
    path = download("ffhq256", tmp_path, url=server.url + "/file.pt", progress=False)
    assert path == tmp_path / "ffhq_10m.pt" and path.read_bytes() == PAYLOAD
    assert SHA in capsys.readouterr().out  # unpinned hash printed so it can be pinned
    assert download("ffhq256", tmp_path, url=server.url + "/file.pt", progress=False) == path
    assert len(server.requests) == 1  # present file kept, nothing fetched again
    monkeypatch.setenv("RESTOREBENCH_CHECKPOINTS", str(tmp_path / "env"))
    assert main(["lsun_bedroom256", "--url", server.url + "/file.pt", "--no-progress"]) == 0
    assert (tmp_path / "env" / "lsun_bedroom.pt").read_bytes() == PAYLOAD
    assert main(["bogus"]) == 2 and main(["ffhq256", "imagenet256", "--url", "http://x"]) == 2
    assert main(["--list"]) == 0 and "openaipublic.blob.core.windows.net" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown checkpoint"):
        download("ffhq")


def _fast(fn):
    def wrapped(*args, **kwargs):
        return fn(*args, **{**kwargs, **FAST})
    return wrapped
