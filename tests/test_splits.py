"""Validation splits are disjoint from every test manifest, and anything that overlaps one is refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import splits
from bench.errors import BenchError
from bench.protocol import load

ROOT = Path(__file__).resolve().parents[1]


def _manifest(path: str) -> dict:
    return json.loads((ROOT / path).read_text())


def _ids(path: str) -> set[str]:
    return {e["id"] for e in _manifest(path)["images"]}


@pytest.mark.parametrize("dataset", sorted(splits.VALIDATION_MANIFESTS))
def test_every_validation_split_is_disjoint_from_every_test_manifest(dataset):
    manifest = splits.VALIDATION_MANIFESTS[dataset]
    splits.refuse_test_overlap(manifest, "test")  # no error
    val = _manifest(manifest)
    assert val["dataset"] == dataset and val["split"] == "validation"
    names = {e["id"] for e in val["images"]} | {Path(e["file"]).stem for e in val["images"]}
    hashes = {e["sha256"] for e in val["images"] if e["sha256"]}
    for test in splits.evaluation_manifests():
        t = json.loads(test.read_text())
        t_names = {e["id"] for e in t.get("images") or []} | {Path(e["file"]).stem for e in t.get("images") or []}
        assert not names & t_names or t["dataset"] != dataset
        assert not hashes & {e["sha256"] for e in t.get("images") or [] if e["sha256"]}


def test_ffhq_and_imagenet_splits_follow_their_rules():
    assert _ids("datasets/ffhq256_validation.json") == {f"{i:05d}" for i in range(1000, 1100)}
    assert not _ids("datasets/ffhq256_validation.json") & _ids("datasets/ffhq256_val1k.json")
    val = _manifest("datasets/imagenet256_validation.json")["images"]
    test = _manifest("datasets/imagenet256_val500.json")["images"]
    # the other half of the same 1k list: one image per class 500-999 (the test half has classes 0-499)
    assert sorted(e["class_index"] for e in val) == list(range(500, 1000))
    assert sorted(e["class_index"] for e in test) == list(range(500))
    assert len({e["id"] for e in val}) == 500 and not {e["id"] for e in val} & {e["id"] for e in test}


def test_the_shipped_demo_validation_images_are_the_prior_samples_they_claim_to_be():
    manifest = _manifest(splits.VALIDATION_MANIFESTS["demo"])
    regenerated = splits.demo_validation_images(len(manifest["images"]))
    for entry, arr in zip(manifest["images"], regenerated):
        shipped = np.asarray(Image.open(ROOT / splits.VALIDATION_ROOTS["demo"] / entry["file"]).convert("RGB"))
        diff = np.abs(shipped.astype(int) - arr.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999  # one quantisation step at most (FFT rounding)
    from common.fileio import sha256_file
    for entry in manifest["images"]:
        assert sha256_file(ROOT / splits.VALIDATION_ROOTS["demo"] / entry["file"]) == entry["sha256"]


def test_every_protocol_manifest_counts_as_a_test_manifest():
    found = {p.resolve() for p in splits.evaluation_manifests()}
    for name in ("demo", "table1", "smoke"):
        for ds in load(name).datasets:
            assert (ROOT / ds.manifest).resolve() in found
    assert not {(ROOT / m).resolve() for m in splits.VALIDATION_MANIFESTS.values()} & found


def test_a_test_manifest_itself_is_refused_with_the_validation_one_named():
    with pytest.raises(BenchError, match=r"train-restorer: datasets/ffhq256_val1k.json is a test manifest.*"
                                         r"use datasets/ffhq256_validation.json"):
        splits.refuse_test_overlap("datasets/ffhq256_val1k.json", "train-restorer")


def test_an_overlapping_manifest_is_refused_naming_the_ids_and_the_test_manifest(tmp_path):
    m = {"dataset": "ffhq", "images": [{"id": "05000", "file": "05000.png", "sha256": None},
                                        {"id": "00017", "file": "00017.png", "sha256": None},
                                        {"id": "x", "file": "00999.png", "sha256": None}]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(m))
    with pytest.raises(BenchError) as err:
        splits.refuse_test_overlap(path, "train-restorer")
    text = str(err.value)
    assert "datasets/ffhq256_val1k.json" in text and "00017" in text and "00999" in text and "05000" not in text
    assert "\n" not in text


def test_the_same_bytes_under_another_name_are_refused():
    demo = _manifest("datasets/demo.json")["images"][0]
    m = {"dataset": "mine", "images": [{"id": "renamed", "file": "renamed.png", "sha256": demo["sha256"]}]}
    with pytest.raises(BenchError, match=r"datasets/demo.json: renamed"):
        splits.refuse_test_overlap(m, "bench sweep")


def test_a_disjoint_manifest_passes():
    splits.refuse_test_overlap({"dataset": "ffhq", "images": [{"id": "01000", "file": "01000.png"}]}, "x")
    # same ids in another dataset are other images
    splits.refuse_test_overlap({"dataset": "celeba", "images": [{"id": "00000", "file": "00000.png"}]}, "x")


def test_validation_protocol_swaps_manifests_and_refuses_datasets_without_a_split():
    p = splits.validation_protocol(load("demo"), images=3)
    (ds,) = p.datasets
    assert (ds.manifest, ds.root, ds.count) == ("datasets/demo_validation.json", "datasets/demo_validation", 3)
    assert load("demo").datasets[0].manifest == "datasets/demo.json"  # the original is untouched
    with pytest.raises(BenchError, match="has 8 images"):
        splits.validation_protocol(load("demo"), images=9)
    import dataclasses
    demo = load("demo")
    lsun = dataclasses.replace(demo, datasets=[dataclasses.replace(demo.datasets[0], name="lsun_bedroom")])
    with pytest.raises(BenchError, match="'lsun_bedroom' has no validation split"):
        splits.validation_protocol(lsun)
    with pytest.raises(BenchError, match=r"dataset 'nope' has no validation split"):
        splits.validation_manifest("nope")
