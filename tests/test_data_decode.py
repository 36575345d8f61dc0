"""The start-up image check decodes every image in full: a truncated file is named before any work."""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from bench import data, protocol
from bench.errors import BenchError


def _image_bytes(fmt: str, seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path):
    """good.png, cut.png (last half missing), cut.jpg (last half missing), a manifest listing them."""
    root = tmp_path / "imgs"
    root.mkdir()
    files = {"good.png": _image_bytes("PNG", 0)}
    files["cut.png"] = _image_bytes("PNG", 1)[: len(_image_bytes("PNG", 1)) // 2]
    files["cut.jpg"] = _image_bytes("JPEG", 2)[: len(_image_bytes("JPEG", 2)) // 2]
    for name, content in files.items():
        (root / name).write_bytes(content)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"dataset": "x", "images": [
        {"id": n.replace(".", "_"), "file": n, "sha256": hashlib.sha256(c).hexdigest()} for n, c in files.items()]}))
    return root, manifest


def _spec(root, manifest, size=32):
    return protocol.DatasetSpec("x", "X", "gaussian", size, str(manifest), str(root))


def test_truncated_files_open_but_do_not_decode(folder):
    root, _ = folder
    with Image.open(root / "cut.png") as im:  # the old header check passed them
        assert im.size == (48, 48)
    assert data.probe_image(root / "good.png", 32) is None
    msg = data.probe_image(root / "cut.png", 32)
    assert msg.startswith(f"{root / 'cut.png'}: cannot decode the image (") and "truncated" in msg
    assert msg.endswith("re-download or replace the file, then check with `python -m bench data check`")


def test_resolve_lists_every_bad_file_in_one_message(folder):
    root, manifest = folder
    with pytest.raises(BenchError) as err:
        data.resolve(_spec(root, manifest))
    msg = str(err.value)
    assert msg.splitlines()[0] == "dataset 'x': 2 unusable image(s):"
    assert "cut.png: cannot decode" in msg and "cut.jpg: cannot decode" in msg and "good.png" not in msg
    assert "datasets/README.md" not in msg  # the files are there: the fix is to replace them
    assert [r.id for r in data.resolve(_spec(root, manifest), limit=1)] == ["good_png"]


def test_folder_check_reports_unusable_images(folder):
    root, manifest = folder
    check = data.check_folder(_spec(root, manifest))
    assert not check.ok and not check.missing and not check.changed
    assert [m.split(":")[0] for m in check.unusable] == [str(root / "cut.png"), str(root / "cut.jpg")]
    assert len(check.refs) == 3  # hashes are still recorded for every file present
    small = data.check_folder(_spec(root, manifest, size=64), count=1)
    assert small.unusable == [f"{root / 'good.png'}: image is 48x48, smaller than the protocol size 64; "
                              "use the full-resolution file (we do not upscale)"]
    assert data.check_folder(_spec(root, manifest), decode=False).ok
