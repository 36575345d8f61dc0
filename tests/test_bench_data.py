"""Protocols, manifests and image loading: shipped files are consistent, bad input is named."""
from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from bench import data, protocol
from bench.errors import BenchError
from bench.protocol import REPO_ROOT

TABLE1_TASKS = ["inpaint_random", "deblur_gaussian", "deblur_motion", "sr4"]
TABLE1_SOLVERS = ["pnp_admm", "scoresde", "mcg", "ddrm", "dps", "diffpir", "dpps", "reddiff", "spgd", "dcdp",
                  "ddnm", "pigdm", "daps"]


def test_shipped_protocols_parse_and_say_everything():
    t1 = protocol.load("table1")
    assert [d.name for d in t1.datasets] == ["ffhq", "imagenet"]
    assert [(d.count, d.image_size) for d in t1.datasets] == [(1000, 256), (500, 256)]
    assert [t.name for t in t1.tasks] == TABLE1_TASKS
    assert all(t.sigma_y == 0.05 for t in t1.tasks)
    assert [s.name for s in t1.solvers] == TABLE1_SOLVERS
    assert t1.metrics == {"lpips": "piq-vgg-avg", "ssim": "rgb"}
    demo = protocol.load("demo")
    assert [t.name for t in demo.tasks] == TABLE1_TASKS
    # the demo adds a labelled PnP-ADMM row with its external DnCNN (the main pnp_admm row uses the prior)
    assert [s.name for s in demo.solvers] == (TABLE1_SOLVERS[:1] + ["pnp_admm_dncnn"] + TABLE1_SOLVERS[1:]
                                              + ["oracle_mean", "oracle_sample"])
    assert demo.datasets[0].prior == "gaussian"
    smoke = protocol.load("smoke")
    assert smoke.smoke and smoke.datasets[0].count == 2
    import solvers
    assert [s.name for s in smoke.solvers] == solvers.available()
    import operators
    for p in (t1, demo, smoke):
        assert {t.name for t in p.tasks} <= set(operators.names())


def test_unknown_keys_are_errors_naming_the_key():
    raw = {"name": "x", "seed": 0, "batch_size": 1, "sigma_y": 0.05, "metrics": {}, "tasks": {"sr4": {}},
           "solvers": {"dps": {}}, "datasets": {"d": {"prior": "gaussian", "image_size": 32, "manifest": "m"}}}
    protocol.parse(raw)
    for where, bad in (("top", {**raw, "sigma": 1}),
                       ("task", {**raw, "tasks": {"sr4": {"param": {}}}}),
                       ("solver", {**raw, "solvers": {"dps": {"override": {}}}}),
                       ("dataset", {**raw, "datasets": {"d": {**raw["datasets"]["d"], "size": 3}}})):
        with pytest.raises(BenchError, match="unknown key"):
            protocol.parse(bad)
    with pytest.raises(BenchError, match="missing key"):
        protocol.parse({k: v for k, v in raw.items() if k != "seed"})
    with pytest.raises(BenchError, match="batch_size"):
        protocol.parse({**raw, "batch_size": 0})


def test_demo_manifest_matches_the_shipped_images():
    m = data.load_manifest("datasets/demo.json")
    assert [e["id"] for e in m["images"]] == ["astronaut", "coffee", "chelsea", "rocket"]
    for e in m["images"]:
        path = REPO_ROOT / "datasets" / "demo" / e["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == e["sha256"]
        assert e["licence"] and e["source"]
        with Image.open(path) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
    assert (REPO_ROOT / "datasets" / "demo" / "README.md").exists()


def test_table1_manifests():
    ffhq = data.load_manifest("datasets/ffhq256_val1k.json")["images"]
    assert [e["file"] for e in ffhq] == [f"{i:05d}.png" for i in range(1000)]
    inet = data.load_manifest("datasets/imagenet256_val500.json")["images"]
    assert len(inet) == len({e["id"] for e in inet}) == 500
    assert inet[0]["file"] == "ILSVRC2012_val_00000293.JPEG" and inet[-1]["file"] == "ILSVRC2012_val_00000564.JPEG"
    assert [e["class_index"] for e in inet] == list(range(500))  # one image per class, in list order


def _spec(tmp_path, manifest, size=8):
    return protocol.DatasetSpec("x", "x", "gaussian", size, str(manifest), root=str(tmp_path))


def test_folder_check_names_missing_changed_and_extra(tmp_path):
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((8, 8, 3), ord(name), np.uint8)).save(tmp_path / f"{name}.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "extra.png")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"dataset": "x", "images": [
        {"id": "a", "file": "a.png", "sha256": data.sha256_file(tmp_path / "a.png")},
        {"id": "b", "file": "b.png", "sha256": "0" * 64},
        {"id": "c", "file": "c.png", "sha256": None},          # ids only: hash recorded, not checked
        {"id": "d", "file": "d.png", "sha256": None}]}))
    check = data.check_folder(_spec(tmp_path, manifest), list_extra=True)
    assert check.missing == ["d.png"]
    assert [c[0] for c in check.changed] == ["b.png"]
    assert check.extra == ["extra.png"]
    assert {r.id: r.sha256 for r in check.refs}["c"] == data.sha256_file(tmp_path / "c.png")
    msg = data.describe_problems(_spec(tmp_path, manifest), check)
    assert "d.png" in msg and "b.png differs" in msg and "datasets/README.md" in msg


def test_load_image_converts_resizes_and_crops(tmp_path):
    grey = np.tile(np.arange(0, 240, 3, dtype=np.uint8), (40, 1))  # 40 x 80 horizontal ramp
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = data.load_image(tmp_path / "g.png", 20)
    assert any("converted to RGB" in str(w.message) for w in caught)
    assert x.shape == (3, 20, 20) and x.dtype == torch.float32
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey -> equal channels
    # short side 40 -> 20 (80 -> 40), centre crop keeps the middle half of the ramp: columns 10..29 of 40
    centre = (grey[:, 40:42].astype(float).mean() / 127.5) - 1
    assert abs(x[0, :, 9:11].mean().item() - centre) < 0.05
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        y = data.load_image(tmp_path / "a.png", 16)
    assert torch.allclose(y[0], torch.ones(16, 16)) and torch.allclose(y[1], -torch.ones(16, 16))
    with pytest.raises(BenchError, match="smaller than the protocol size"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data.load_image(tmp_path / "a.png", 32)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(BenchError, match="cannot read"):
        data.load_image(tmp_path / "bad.png", 8)


def test_data_root_environment(tmp_path, monkeypatch):
    spec = protocol.DatasetSpec("ffhq", "FFHQ", "ffhq256", 256, "datasets/ffhq256_val1k.json")
    monkeypatch.setenv("RESTOREBENCH_DATA", str(tmp_path))
    assert data.data_root(spec) == tmp_path / "ffhq"
    monkeypatch.delenv("RESTOREBENCH_DATA")
    assert data.data_root(spec) == REPO_ROOT / "data" / "ffhq"
