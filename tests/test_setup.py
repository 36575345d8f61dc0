"""The project venv is a CPU-only torch stack that imports torchvision/lpips/torchmetrics (via the shim),
and the offline LPIPS backbones are converted, checked and installed as documented."""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import assets, lpips_weights
from common import torchvision_shim

SYSTEM_TORCH = (Path(sys.prefix) / ".restorebench-system").exists()  # `make TORCH=system` venv


@pytest.mark.skipif(SYSTEM_TORCH, reason="venv built with TORCH=system reuses the machine's torch")
def test_venv_has_a_cpu_only_torch():
    assert torch.version.cuda is None or torch.__version__.endswith("+cpu"), torch.__version__
    nvidia = [d.metadata["Name"] for d in importlib.metadata.distributions()
              if (d.metadata["Name"] or "").lower().startswith("nvidia-")]
    assert nvidia == []


def test_torchvision_lpips_torchmetrics_import():
    import lpips
    import torchmetrics
    import torchvision

    assert torchvision.models.alexnet is not None and lpips.LPIPS is not None
    assert torchmetrics.functional.image.structural_similarity_index_measure is not None


@pytest.mark.skipif(SYSTEM_TORCH, reason="with a matching CUDA torch the extension loads and the shim is off")
def test_shim_is_active_here_and_idempotent():
    assert not torchvision_shim._extension_loads()  # the CUDA-built _C.so cannot load on CPU torch
    assert torchvision_shim.install() is True
    library = torchvision_shim._library
    assert torchvision_shim.install() is True
    assert torchvision_shim._library is library  # second call defines nothing new
    assert torch.ops.torchvision.nms is not None


def test_source_checkpoints_have_the_recorded_sha256():
    for net, prefix in (("alex", "443c5bc3"), ("vgg", "2ecbe4ce")):
        info = lpips_weights.backbone(net)
        digest = hashlib.sha256(lpips_weights.source_path(net).read_bytes()).hexdigest()
        assert digest == info.source_sha256 and digest.startswith(prefix)


def test_unpickler_admits_numpy_arrays_only():
    arrays = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 2, 3)}}
    loaded = lpips_weights.load_numpy_pickle(pickle.dumps(arrays, protocol=3))
    assert np.array_equal(loaded["a"]["kernel"], arrays["a"]["kernel"])
    with pytest.raises(pickle.UnpicklingError, match="blocked"):
        lpips_weights.load_numpy_pickle(pickle.dumps(os.getcwd, protocol=3))


def test_install_into_a_fresh_cache_is_torchvision_format_atomic_and_idempotent(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = lpips_weights.hub_checkpoint_path("alex")
    assert target == tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert not lpips_weights.is_installed("alex")
    assert lpips_weights.install("alex").startswith("installed")
    assert lpips_weights.install("alex").startswith("present")
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary file left behind

    # torchvision itself loads it from the cache (no download) with the ImageNet features
    model = torchvision.models.alexnet(weights=torchvision.models.AlexNet_Weights.IMAGENET1K_V1)
    expected = lpips_weights.convert_features("alex")
    for key, value in model.features.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert lpips_weights.features_digest(expected) == lpips_weights.backbone("alex").features_sha256

    target.write_bytes(b"truncated")
    assert not lpips_weights.is_installed("alex")
    with pytest.raises(lpips_weights.WeightsError, match="make venv"):
        lpips_weights.load_features("alex")
    lpips_weights.ensure_installed("alex")
    assert lpips_weights.is_installed("alex")


def test_tampered_features_are_rejected_at_load(tmp_path):
    features = lpips_weights.convert_features("alex")
    features["0.bias"] = features["0.bias"] + 1e-3
    path = tmp_path / "alex.pth"
    torch.save({f"features.{k}": v for k, v in features.items()}, path)
    with pytest.raises(lpips_weights.WeightsError, match="expected ImageNet alex features"):
        lpips_weights.load_features("alex", path)


def test_assets_prints_one_line_per_asset_and_skips_what_is_present(capsys, monkeypatch):
    for net in lpips_weights.BACKBONES:
        lpips_weights.ensure_installed(net)
    monkeypatch.setattr(assets, "install_pnp_denoisers", lambda: ["pnp denoisers: stub"])
    assert assets.main() == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"lpips backbone {net}: present {lpips_weights.hub_checkpoint_path(net)}"
                         for net in ("alex", "vgg")]
    assert lines[2:] == ["pnp denoisers: stub"]


def test_citation_file_is_valid_cff_naming_the_project_and_its_licence():
    import yaml
    root = Path(__file__).resolve().parents[1]
    cff = yaml.safe_load((root / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert "RestoreBench" in cff["title"] and cff["license"] == "Apache-2.0"
    assert cff["version"] == __import__("tomllib").loads((root / "pyproject.toml").read_text())["project"]["version"]
    assert all(a.get("name") or a.get("family-names") for a in cff["authors"])
