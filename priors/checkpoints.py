"""Checkpoint downloader: `python -m bench checkpoints [names]` / `make checkpoints NAMES=ffhq256`.

Plain urllib over HTTP(S), bounded retries with timeouts, resumable (a `<file>.part` is continued
with an HTTP Range request), verified (size, and sha256 where pinned in `priors.registry.SPECS`)
and atomic (the `.part` is renamed to the final name only after verification). Google Drive links
(the DPS FFHQ model) answer large files with an HTML "can't scan for viruses" page; the download
form or confirm token in that page is followed (`confirm_url_from_html`). When no sha256 is pinned
the computed hash is printed so it can be pinned.
"""
from __future__ import annotations

import argparse
import errno
import html as html_lib
import http.client
import os
import re
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import nullcontext
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Sequence

from priors.registry import SPECS, CheckpointError, CheckpointSpec, checkpoint_dir, sha256_file

USER_AGENT = "restorebench-checkpoints/1.0"
_RETRYABLE = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError)
# no network / wrong host / nothing listening: another attempt cannot succeed, so fail at once
_UNREACHABLE_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}
_LOCAL_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EPERM}


class _Incomplete(Exception):
    """The connection ended before the announced number of bytes arrived."""


def download(name: str, dest_dir: str | os.PathLike | None = None, url: str | None = None,
             progress: bool = True, **fetch_options: Any) -> Path:
    """Download the registered checkpoint `name` into dest_dir ($RESTOREBENCH_CHECKPOINTS or ./checkpoints).

    An existing file that passes verification is kept. `url` replaces the registered link (a mirror).
    """
    if name not in SPECS:
        raise ValueError(f"unknown checkpoint {name!r}; choose from {list(SPECS)}")
    spec = SPECS[name]
    dest = Path(dest_dir) if dest_dir is not None else checkpoint_dir()
    target = dest / spec.filename
    if target.is_file():
        if _matches(target, spec):
            _say(progress, f"{spec.name}: {target} already present")
            return target
        raise CheckpointError(f"{target} exists but fails verification (size/sha256): delete it and run again")
    return fetch_file(url or spec.url, target, size=spec.size, sha256=spec.sha256, progress=progress,
                      label=spec.name, **fetch_options)


def _matches(path: Path, spec: CheckpointSpec) -> bool:
    if spec.size is not None and path.stat().st_size != spec.size:
        return False
    return spec.sha256 is None or sha256_file(path) == spec.sha256


def fetch_file(url: str, dest: Path, *, size: int | None = None, sha256: str | None = None,
               progress: bool = True, label: str | None = None, timeout: float = 60.0,
               max_attempts: int = 8, backoff: float = 2.0, chunk_size: int = 1 << 20) -> Path:
    """Download url to dest through dest.part (resumed if present), verify, then rename atomically."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    current = gdrive_direct_url(url)
    total: int | None = size
    html_hops, failures = 0, 0
    last_error: BaseException | None = None
    with _progress_bar(progress) as bar:
        task = bar.add_task(label or dest.name, total=total) if bar else None
        while True:
            if failures >= max_attempts:
                raise CheckpointError(f"download of {url} to {dest} failed after {failures} attempts "
                                      f"(last error: {last_error}); run the same command again to resume from {part}")
            offset = part.stat().st_size if part.exists() else 0
            headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={offset}-"} if offset else {})}
            try:
                with opener.open(urllib.request.Request(current, headers=headers), timeout=timeout) as resp:
                    if "text/html" in resp.headers.get("Content-Type", ""):
                        page = resp.read(4_000_000).decode("utf-8", "replace")
                        nxt = confirm_url_from_html(page, resp.geturl())
                        if nxt is None or html_hops >= 3:
                            raise CheckpointError(
                                f"{url} returned an HTML page instead of the checkpoint (download quota exceeded or "
                                f"link changed?); download it in a browser to {dest}")
                        current, html_hops = nxt, html_hops + 1
                        continue
                    if resp.status != 206:
                        offset = 0  # server ignored the Range header: start over
                    total = _total_size(resp, offset) or total
                    if bar:
                        bar.update(task, total=total, completed=offset)
                    _copy(resp, part, offset, chunk_size, bar, task)
                    have = part.stat().st_size
                    if total is not None and have < total:
                        raise _Incomplete(f"connection closed after {have} of {total} bytes")
                    break
            except urllib.error.HTTPError as exc:
                if exc.code == 416 and offset:  # nothing left past our offset: the part file is complete
                    break
                if exc.code < 500 and exc.code != 429:
                    raise CheckpointError(f"{url}: HTTP {exc.code} {exc.reason}; check the link "
                                          f"or download the file by hand to {dest}") from exc
                last_error = exc
            except (_Incomplete, *_RETRYABLE) as exc:
                permanent = permanent_failure(exc, current, part)
                if permanent is not None:
                    raise CheckpointError(f"{permanent}; or download {url} by hand to {dest}") from exc
                last_error = exc
            failures += 1
            time.sleep(min(backoff * failures, 30.0))
    _verify_part(part, dest, url, size, sha256, label)
    os.replace(part, dest)
    return dest


def permanent_failure(exc: BaseException, url: str, part: Path) -> str | None:
    """What is wrong, when retrying `exc` cannot help (DNS failure, connection refused, no route, TLS
    certificate, local disk); None for what may pass (timeouts, resets mid-transfer, 5xx, short reads)."""
    reason: Any = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    parts = urllib.parse.urlparse(url)
    host = parts.hostname or url
    where = f"{host}:{parts.port}" if parts.port else host
    if isinstance(reason, socket.gaierror):
        return (f"cannot resolve host {host} ({reason.strerror or reason}): no network or DNS, or a wrong link; "
                f"check the connection (and proxy settings, HTTPS_PROXY) and run again")
    if isinstance(reason, ConnectionRefusedError):
        return f"connection to {where} refused: nothing serves that address; check the link or proxy and run again"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return (f"TLS certificate of {host} not accepted ({reason.verify_message or reason}); fix the system's CA "
                f"certificates (or SSL_CERT_FILE) and run again")
    if isinstance(reason, OSError) and reason.errno in _UNREACHABLE_ERRNOS:
        return f"cannot reach {where} ({reason.strerror}): no network route; check the connection and run again"
    if isinstance(reason, OSError) and not isinstance(reason, (ConnectionError, TimeoutError)) \
            and reason.errno in _LOCAL_ERRNOS and getattr(reason, "filename", None):
        return f"cannot write {reason.filename} ({reason.strerror}); free space or fix permissions of {part.parent}"
    return None


def _total_size(resp: Any, offset: int) -> int | None:
    content_range = resp.headers.get("Content-Range", "")
    m = re.match(r"bytes\s+\d+-\d+/(\d+)", content_range)
    if m:
        return int(m.group(1))
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


def _copy(resp: Any, part: Path, offset: int, chunk_size: int, bar: Any, task: Any) -> None:
    with open(part, "ab" if offset else "wb") as fh:
        while chunk := resp.read(chunk_size):
            fh.write(chunk)
            if bar:
                bar.advance(task, len(chunk))


def _verify_part(part: Path, dest: Path, url: str, size: int | None, sha256: str | None, label: str | None) -> None:
    have = part.stat().st_size
    if size is not None and have != size:
        part.unlink()
        raise CheckpointError(f"download of {url} gave {have} bytes, expected {size}; the partial file was "
                              f"removed: run again or download by hand to {dest}")
    digest = sha256_file(part)
    if sha256 is not None and digest != sha256:
        part.unlink()
        raise CheckpointError(f"download of {url} has sha256 {digest}, expected {sha256}; the file was removed: "
                              f"run again (or check the link / pinned hash for {label or dest.name})")
    if sha256 is None:
        print(f"{label or dest.name}: {have} bytes, sha256 {digest} (not pinned; add it to priors/registry.py "
              "to verify future downloads)")


# --------------------------------------------------------------------------- Google Drive
_GDRIVE_ID = [re.compile(r"drive\.google\.com/file/d/([\w-]+)"), re.compile(r"[?&]id=([\w-]+)")]


def gdrive_direct_url(url: str) -> str:
    """A Google Drive file link (…/file/d/ID/view, open?id=ID, uc?id=ID) -> its direct download link."""
    host = urllib.parse.urlparse(url).netloc
    if host not in ("drive.google.com", "docs.google.com"):
        return url
    for pattern in _GDRIVE_ID:
        m = pattern.search(url)
        if m:
            return f"https://drive.google.com/uc?export=download&id={m.group(1)}"
    raise CheckpointError(f"{url} is not a Google Drive file link (a folder?); open it in a browser and "
                          "use the link of the file itself")


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[dict[str, str], list[tuple[str, str]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((a, []))
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1][1].append((a["name"], a.get("value", "")))


def confirm_url_from_html(page: str, base_url: str) -> str | None:
    """The URL behind Google Drive's large-file warning page, or None if the page has none.

    Current pages hold a GET form (id "download-form", action drive.usercontent.google.com/download) with
    hidden inputs id/export/confirm/uuid; older ones a link or token `confirm=XXXX`.
    """
    parser = _FormParser()
    parser.feed(page)
    for attrs, inputs in parser.forms:
        action = attrs.get("action", "")
        if attrs.get("id") == "download-form" or "download" in action:
            target = urllib.parse.urljoin(base_url, html_lib.unescape(action))
            sep = "&" if urllib.parse.urlparse(target).query else "?"
            return target + sep + urllib.parse.urlencode(inputs)
    m = re.search(r'href="([^"]*confirm=[^"]*)"', page)
    if m:
        return urllib.parse.urljoin(base_url, html_lib.unescape(m.group(1)))
    m = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    if m:
        parts = urllib.parse.urlparse(base_url)
        query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "confirm"] + [("confirm", m.group(1))]
        return urllib.parse.urlunparse(parts._replace(query=urllib.parse.urlencode(query)))
    return None


# --------------------------------------------------------------------------- CLI
def _progress_bar(enabled: bool) -> Any:
    if not enabled:
        return nullcontext(None)
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn())


def _say(enabled: bool, msg: str) -> None:
    if enabled:
        print(msg)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench checkpoints [names] [--dir D] [--url U] [--no-progress] [--list]`."""
    parser = argparse.ArgumentParser(prog="python -m bench checkpoints",
                                     description="Download, resume and verify the ADM checkpoints.")
    parser.add_argument("names", nargs="*", help=f"checkpoints to fetch (default: all of {', '.join(SPECS)})")
    parser.add_argument("--dir", type=Path, default=None, help="destination ($RESTOREBENCH_CHECKPOINTS or ./checkpoints)")
    parser.add_argument("--url", default=None, help="mirror URL to use instead of the registered link (one name only)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--list", action="store_true", help="list the registered checkpoints and exit")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.list:
        for spec in SPECS.values():
            print(f"{spec.name:16s} {spec.filename:30s} {spec.url}\n{'':16s} source: {spec.source}")
        return 0
    names = args.names or list(SPECS)
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        print(f"unknown checkpoint(s) {unknown}; choose from {list(SPECS)}", file=sys.stderr)
        return 2
    if args.url and len(names) != 1:
        print("--url needs exactly one checkpoint name", file=sys.stderr)
        return 2
    status = 0
    for name in names:
        try:
            path = download(name, args.dir, url=args.url, progress=not args.no_progress)
            print(f"{name}: {path}")
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
        except OSError as exc:  # e.g. the destination folder cannot be created
            print(f"error: {name}: {exc.strerror or exc}: {exc.filename or ''}; choose another folder with --dir "
                  f"or $RESTOREBENCH_CHECKPOINTS", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
