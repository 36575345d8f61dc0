"""Images from frozen manifests (datasets/*.json) and the check that a user's folder matches one.

A manifest lists the exact images of an evaluation set, in evaluation order:

    {"dataset": "ffhq", "title": "...", "source": "...", "note": "...",
     "images": [{"id": "00000", "file": "00000.png", "sha256": "<hex of the file bytes>" | null}, ...]}

`sha256: null` means we could not hash the published file ourselves: the check then verifies the
ids only, and every record stores the hash of the user's file (`image_sha256`), so two results can
be compared on the bytes they actually used.

Loading (the SPGD/DAPS pipeline, spec seed §6.1): PIL, converted to RGB (grey or RGBA with a
warning), short side resized to the protocol size with an antialiased bicubic filter, centre crop,
mapped to [-1, 1] float32. An image smaller than the protocol size is an error (no upscaling).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from bench.errors import BenchError
from common.fileio import sha256_file
from bench.protocol import DatasetSpec, repo_path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class ImageRef:
    dataset: str
    id: str
    path: Path
    sha256: str  # of the user's file bytes

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.id}"


def load_manifest(path: str | Path) -> dict:
    p = repo_path(path)
    if not p.exists():
        raise BenchError(f"manifest {p} not found (manifests live in datasets/; see datasets/README.md)")
    try:
        manifest = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise BenchError(f"manifest {p} is not valid JSON: {err}") from None
    if manifest.get("images") is None and (manifest.get("selection") or {}).get("rule") == "sorted_file_names":
        return manifest
    if not isinstance(manifest.get("images"), list) or not manifest["images"]:
        raise BenchError(f"manifest {p} has no 'images' list (nor a selection rule)")
    return manifest


def data_root(spec: DatasetSpec) -> Path:
    """The folder of a dataset: its protocol `root`, else $RESTOREBENCH_DATA/<name>, else ./data/<name>."""
    if spec.root:
        return repo_path(spec.root)
    base = os.environ.get("RESTOREBENCH_DATA")
    return Path(base) / spec.name if base else repo_path("data") / spec.name


def _index_by_name(root: Path) -> dict[str, Path]:
    """File name -> path for every image under root (ImageNet val may sit in class subfolders)."""
    index: dict[str, Path] = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if Path(f).suffix.lower() in IMAGE_SUFFIXES:
                index.setdefault(f, Path(dirpath) / f)
    return index


@dataclass
class FolderCheck:
    root: Path
    missing: list[str]
    changed: list[tuple[str, str, str]]  # (file, expected sha, found sha)
    extra: list[str]
    refs: list[ImageRef]
    unusable: list[str] = field(default_factory=list)  # one message per file that does not decode / is too small

    @property
    def ok(self) -> bool:
        return not self.missing and not self.changed and not self.unusable


def check_folder(spec: DatasetSpec, count: int | None = None, list_extra: bool = False,
                 decode: bool = True) -> FolderCheck:
    """Compare the user's folder with the first `count` manifest entries (all when None).

    With `decode` every listed image is also decoded in full (a truncated file opens fine and fails
    only when its pixels are read) and checked against the protocol size: failures go to `unusable`.
    Each file is read once for both its hash and its decode.
    """
    manifest = load_manifest(spec.manifest)
    root = data_root(spec)
    if manifest.get("images") is None:  # rule-based subset: the first files by name
        n = count or manifest["selection"]["count"]
        files = sorted(_index_by_name(root)) if root.is_dir() else []
        manifest = {**manifest, "images": [{"id": Path(f).stem, "file": f, "sha256": None} for f in files[:n]]}
        if len(files) < n:
            manifest["images"] += [{"id": f"#{i}", "file": f"<image {i + 1} of {n}>", "sha256": None}
                                   for i in range(len(files), n)]
    entries = manifest["images"][:count] if count else manifest["images"]
    if not root.is_dir():
        return FolderCheck(root, [e["file"] for e in entries], [], [], [])
    direct = all((root / e["file"]).is_file() for e in entries)
    index = None if direct and not list_extra else _index_by_name(root)
    missing, changed, refs, unusable = [], [], [], []
    for e in entries:
        path = root / e["file"]
        if not path.is_file() and index is not None:
            path = index.get(Path(e["file"]).name, path)
        if not path.is_file():
            missing.append(e["file"])
            continue
        content = path.read_bytes()
        digest = hashlib.sha256(content).hexdigest()
        if e.get("sha256") and e["sha256"] != digest:
            changed.append((e["file"], e["sha256"], digest))
        elif decode and (msg := probe_image(path, spec.image_size, content)):
            unusable.append(msg)
        refs.append(ImageRef(spec.name, str(e["id"]), path, digest))
    extra = []
    if list_extra and index is not None:
        listed = {Path(e["file"]).name for e in manifest["images"]}
        extra = sorted(n for n in index if n not in listed)
    return FolderCheck(root, missing, changed, extra, refs, unusable)


def describe_problems(spec: DatasetSpec, check: FolderCheck) -> str:
    lines = []
    if not check.root.is_dir():
        lines.append(f"dataset {spec.name!r}: folder {check.root} does not exist")
    elif check.missing:
        shown = ", ".join(check.missing[:10]) + (f" ... ({len(check.missing)} in all)" if len(check.missing) > 10 else "")
        lines.append(f"dataset {spec.name!r}: {len(check.missing)} image(s) of {spec.manifest} missing in "
                     f"{check.root}: {shown}")
    for file, want, got in check.changed[:10]:
        lines.append(f"dataset {spec.name!r}: {file} differs from the manifest (sha256 {got[:12]}..., "
                     f"expected {want[:12]}...)")
    if len(check.changed) > 10:
        lines.append(f"  ... {len(check.changed)} changed files in all")
    if check.unusable:
        lines.append(f"dataset {spec.name!r}: {len(check.unusable)} unusable image(s):")
        lines += [f"  {msg}" for msg in check.unusable[:20]]
        if len(check.unusable) > 20:
            lines.append(f"  ... {len(check.unusable)} unusable files in all")
        if check.root.is_dir() and not check.missing and not check.changed:
            return "\n".join(lines)
    lines.append(f"  put the images in {check.root} (or set RESTOREBENCH_DATA=<folder holding {spec.name}/>); "
                 f"how to obtain them: datasets/README.md")
    return "\n".join(lines)


def resolve(spec: DatasetSpec, limit: int | None = None) -> list[ImageRef]:
    """The images a run uses, after checking them against the manifest (BenchError names problems)."""
    count = min(x for x in (spec.count, limit) if x) if (spec.count or limit) else None
    check = check_folder(spec, count)
    if not check.ok:
        raise BenchError(describe_problems(spec, check))
    return check.refs


def probe_image(path: Path, size: int, content: bytes | None = None) -> str | None:
    """Before any work: the image decodes in full (PIL `load()`), and is not smaller than the protocol size.

    `content`: the file's bytes when already read (for its hash). None when usable, else the message.
    """
    try:
        with Image.open(io.BytesIO(content) if content is not None else path) as im:
            w, h = im.size
            im.load()  # decodes every pixel: a truncated or corrupt file fails here, not mid-run
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = "not an image format PIL can read" if isinstance(err, UnidentifiedImageError) else err
        return (f"{path}: cannot decode the image ({reason}); re-download or replace the file, then check with "
                f"`python -m bench data check`")
    if min(w, h) < size:
        return (f"{path}: image is {w}x{h}, smaller than the protocol size {size}; "
                f"use the full-resolution file (we do not upscale)")
    return None


def load_image(path: Path, size: int) -> torch.Tensor:
    """(3, size, size) float32 in [-1, 1]: RGB, short side resized (antialiased), centre crop."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode != "RGB":
                if im.mode not in ("RGB", "L", "RGBA", "P", "LA", "I;16", "I", "CMYK"):
                    raise BenchError(f"{path}: unsupported image mode {im.mode}")
                warnings.warn(f"{path}: {im.mode} image converted to RGB", stacklevel=2)
                im = im.convert("RGB")
            w, h = im.size
            if min(w, h) < size:
                raise BenchError(f"{path}: image is {w}x{h}, smaller than the protocol size {size}; "
                                 f"use the full-resolution file (we do not upscale)")
            if min(w, h) != size:
                scale = size / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                im = im.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
                w, h = nw, nh
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise BenchError(f"{path}: cannot read the image ({err}); replace the file") from None
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32) / 127.5 - 1.0
    return x


def load_batch(refs: list[ImageRef], size: int) -> torch.Tensor:
    return torch.stack([load_image(r.path, size) for r in refs])


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    y = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.permute(1, 2, 0).numpy()


def write_manifest(folder: Path, dataset: str, out: Path, ids: list[str] | None = None, **info: str) -> dict:
    """Hash the image files of a folder (or the listed ids) into a manifest (`python -m bench data manifest`)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if ids is not None:
        by_stem = {p.stem: p for p in files}
        files = [by_stem[i] for i in ids]
    manifest = {"dataset": dataset, **info,
                "images": [{"id": p.stem, "file": p.name, "sha256": sha256_file(p)} for p in files]}
    out.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
