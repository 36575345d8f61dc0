"""Metrics reproduce the official implementations (TID2013 calibration pairs, offline-setup anchors),
and behave as the metric card says (clipping, PSNR capped at 100 dB, batch independence, shapes, variants)."""
from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import torch
from PIL import Image

from bench import lpips_weights
from bench.metrics import Metrics, PiqLpipsVggAvg, compute_metrics, lpips_distance, lpips_heads, psnr, to_unit

PAIRS = ["I03", "I04", "I06", "I08", "I19"]


@pytest.fixture(scope="module", autouse=True)
def backbones():
    """The offline backbones `make venv` installs (local conversion, never a download)."""
    for net in ("alex", "vgg"):
        lpips_weights.ensure_installed(net)


def to_pm1(u: np.ndarray) -> torch.Tensor:
    """(H, W, 3) or (B, H, W, 3) array in [0, 1] -> (B, 3, H, W) float32 in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(u, dtype=np.float32))
    t = t[None] if t.ndim == 3 else t
    return t.permute(0, 3, 1, 2) * 2 - 1


@functools.lru_cache(maxsize=None)
def tid2013(root: Path) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, float]]]:
    def read(kind: str) -> np.ndarray:
        return np.stack([np.asarray(Image.open(root / kind / f"{n}.png").convert("RGB")) for n in PAIRS])

    with open(root / "official.csv", newline="") as f:
        rows = {r["Method"]: {k.split(".")[0]: float(v) for k, v in r.items() if k != "Method"}
                for r in csv.DictReader(f)}
    return read("ref"), read("dist"), rows


@pytest.fixture
def tid(shared_fixtures):
    return tid2013(shared_fixtures / "metric-calibration")


@functools.lru_cache(maxsize=None)
def tid_metrics(root: Path) -> dict[str, torch.Tensor]:
    """PSNR and LPIPS-alex of the 5 pairs, through the functions `Metrics` uses (SSIM in float64 at
    512x384 is slow and has no matching official row: its convention differs, see the fixture README)."""
    ref, dist, _ = tid2013(root)
    u_hat, u = to_unit(to_pm1(dist / 255.0)), to_unit(to_pm1(ref / 255.0))
    return {"psnr": psnr(u_hat, u), "lpips": lpips_distance(u_hat, u, "alex").double(),
            "lpips_swapped": lpips_distance(u, u_hat, "alex").double()}


def test_lpips_alex_reproduces_official_tid2013_row(tid, shared_fixtures):
    ref, dist, official = tid
    ours = tid_metrics(shared_fixtures / "metric-calibration")
    expected = torch.tensor([official["lpips"][n] for n in PAIRS], dtype=torch.float64)
    assert torch.allclose(ours["lpips"], expected, atol=1e-3, rtol=0), (ours["lpips"], expected)
    assert torch.equal(ours["lpips_swapped"], ours["lpips"])  # symmetric: the call order cannot matter


def test_psnr_reproduces_official_tid2013_row(tid, shared_fixtures):
    ref, dist, official = tid
    ours = tid_metrics(shared_fixtures / "metric-calibration")["psnr"]
    expected = torch.tensor([official["psnr"][n] for n in PAIRS], dtype=torch.float64)
    assert torch.allclose(ours, expected, atol=1e-2, rtol=0), (ours, expected)
    mse8 = ((ref.astype(np.float64) - dist) ** 2).reshape(len(PAIRS), -1).mean(1)
    assert np.allclose(ours.numpy(), 10 * np.log10(255.0**2 / mse8), atol=1e-5, rtol=0)


# --- regression anchors, shared/spec/offline-setup.md §2.5 (call order (distorted, reference)) -------
def box_down_up(x: np.ndarray) -> np.ndarray:
    h, w, c = x.shape
    small = x.reshape(h // 4, 4, w // 4, 4, c).mean((1, 3))
    return np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)


def zero_pattern(x: np.ndarray) -> np.ndarray:
    i, j = np.indices(x.shape[:2])
    out = x.copy()
    out[(7 * i + 13 * j) % 10 < 3] = 0
    return out


def box3(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[:2]
    p = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    return sum(p[a:a + h, b:b + w] for a in range(3) for b in range(3)) / 9


def anchor_pair(name: str) -> tuple[np.ndarray, np.ndarray]:
    from skimage import data

    ref = {"astronaut": lambda: data.astronaut()[::2, ::2], "coffee": lambda: data.coffee()[:256, :256],
           "chelsea": lambda: data.chelsea()[:256, :256]}[name]().astype(np.float32) / 255
    dist = {"astronaut": box_down_up, "coffee": zero_pattern, "chelsea": box3}[name](ref)
    return dist.astype(np.float32), ref


# name: LPIPS-alex, LPIPS-vgg, PSNR, SSIM (spec), piq-vgg-avg (our own value, regression only)
ANCHORS = {
    "astronaut": (0.38763, 0.46934, 20.1325, 0.65892, 0.34911),
    "coffee": (0.52330, 0.70142, 11.7719, 0.25578, 0.69758),
    "chelsea": (0.16907, 0.13060, 31.7113, 0.86100, 0.10739),
}


@pytest.mark.parametrize("name", sorted(ANCHORS))
def test_offline_setup_regression_anchors(name):
    alex, vgg, psnr_db, ssim_rgb, piq = ANCHORS[name]
    dist, ref = anchor_pair(name)
    a = Metrics("alex")(to_pm1(dist), to_pm1(ref))
    assert abs(a["lpips"].item() - alex) < 1e-4 + 5e-6  # anchors printed to 5 decimals
    assert abs(a["psnr"].item() - psnr_db) < 1e-3
    assert abs(a["ssim"].item() - ssim_rgb) < 1e-4
    u_hat, u = to_unit(to_pm1(dist)), to_unit(to_pm1(ref))  # the other variants: LPIPS only
    assert abs(lpips_distance(u_hat, u, "vgg").item() - vgg) < 1e-4 + 5e-6
    assert abs(lpips_distance(u_hat, u, "piq-vgg-avg").item() - piq) < 1e-4 + 5e-6


# --- conventions of the metric card -----------------------------------------------------------------
def smooth_images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Natural-ish test images in [-1, 1] (blurred noise, not i.i.d. pixels)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.randn(b, 3, h + 4, w + 4, generator=g), 5, 1)
    return (x / x.abs().amax()).float()


@pytest.mark.parametrize("variant", ["alex", "vgg", "piq-vgg-avg"])
def test_identical_images(variant):
    x = smooth_images(2, 64, 80)
    out = Metrics(variant)(x, x.clone())
    assert torch.equal(out["psnr"], torch.full((2,), 100.0, dtype=out["psnr"].dtype))  # the cap, never +inf
    assert torch.allclose(out["ssim"], torch.ones(2, dtype=torch.float64), atol=1e-12, rtol=0)
    assert out["lpips"].abs().max() < 1e-6


def test_output_format_and_batch_of_one():
    x, y = smooth_images(1, 48, 64, 1), smooth_images(1, 48, 64, 2)
    out = compute_metrics(x, y)
    assert set(out) == {"psnr", "ssim", "lpips"}
    for v in out.values():
        assert v.shape == (1,) and v.dtype == torch.float64 and v.device.type == "cpu" and torch.isfinite(v).all()


@pytest.mark.parametrize("variant", ["alex", "piq-vgg-avg"])
def test_batch_independence(variant):
    x, y = smooth_images(3, 48, 80, 3), smooth_images(3, 48, 80, 4)
    metrics = Metrics(variant)
    batch = metrics(x, y)
    for i in range(3):
        alone = metrics(x[i:i + 1], y[i:i + 1])
        for key in ("psnr", "ssim"):
            assert torch.allclose(batch[key][i:i + 1], alone[key], rtol=1e-12, atol=0)
        assert torch.allclose(batch["lpips"][i:i + 1], alone["lpips"], rtol=0, atol=1e-6)


def test_out_of_range_inputs_are_clipped():
    metrics = Metrics()
    x, y = smooth_images(2, 48, 64, 5), smooth_images(2, 48, 64, 6)
    wild = 3 * x  # a third of the values beyond +-1
    assert (wild.abs() > 1).float().mean() > 0.05
    clipped = metrics(wild.clamp(-1, 1), y)
    for key, value in metrics(wild, y).items():
        assert torch.equal(value, clipped[key]), key
    saturated = torch.sign(y)  # every value is -1 or +1: 3x it clips back to itself
    ref = metrics(x, saturated)
    for key, value in metrics(x, 3 * saturated).items():
        assert torch.equal(value, ref[key]), key
    assert not torch.equal(metrics(wild, y)["psnr"], metrics(x, y)["psnr"])  # clipping is not a rescale


def test_shape_errors_name_the_shapes():
    metrics = Metrics()
    with pytest.raises(ValueError, match=r"\(2, 3, 32, 32\).*\(2, 3, 32, 48\)"):
        metrics(torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 48))
    with pytest.raises(ValueError, match=r"\(1, 1, 32, 32\)"):
        metrics(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(3, 32, 32\)"):
        metrics(torch.zeros(3, 32, 32), torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="LPIPS variant"):
        Metrics(lpips="squeeze")
    with pytest.raises(ValueError, match="ssim|SSIM"):
        Metrics(ssim="gray")


def test_missing_backbone_error_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(lpips_weights.WeightsError, match="make venv"):
        Metrics("vgg")


def reference_ssim(u_hat: np.ndarray, u: np.ndarray) -> float:
    """SSIM of two (C, H, W) float64 arrays: 11x11 Gaussian sigma 1.5, reflect padding, full-map mean."""
    t = np.arange(11) - 5.0
    g = np.exp(-t**2 / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    maps = []
    for a, b in zip(u_hat, u):
        f = functools.partial(scipy.ndimage.correlate, weights=win, mode="mirror")
        ma, mb = f(a), f(b)
        va, vb, cab = f(a * a) - ma**2, f(b * b) - mb**2, f(a * b) - ma * mb
        maps.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(maps))


def test_ssim_matches_independent_reference_on_non_square_images():
    dist, ref = anchor_pair("chelsea")
    dist, ref = dist[:40, :72], ref[:40, :72]  # non-square
    x_hat, x = to_pm1(dist), to_pm1(ref)
    u_hat, u = to_unit(x_hat)[0].numpy(), to_unit(x)[0].numpy()
    rgb = Metrics(ssim="rgb")(x_hat, x)["ssim"].item()
    assert abs(rgb - reference_ssim(u_hat, u)) < 1e-12
    y = Metrics(ssim="y")(x_hat, x)["ssim"].item()
    w = np.array([0.299, 0.587, 0.114])[:, None, None]
    assert abs(y - reference_ssim((u_hat * w).sum(0, keepdims=True), (u * w).sum(0, keepdims=True))) < 1e-12
    assert abs(y - rgb) > 1e-3  # the variant really changes the number


# --- the piq-vgg-avg variant -----------------------------------------------------------------------
def independent_piq_lpips(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """piq 0.8.0 LPIPS(replace_pooling=True) written from its description, on torchvision's VGG16 layout."""
    import torchvision

    trunk = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    trunk.load_state_dict(lpips_weights.load_features("vgg"))
    for name, module in trunk.named_children():
        if isinstance(module, torch.nn.MaxPool2d):
            setattr(trunk, name, torch.nn.AvgPool2d(2, 2))
    heads = lpips_heads("vgg")
    norm = torchvision.transforms.functional.normalize
    fa = norm(a, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    fb = norm(b, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    total = torch.zeros(a.shape[0])
    taps = iter(heads)
    with torch.no_grad():
        for index, layer in enumerate(trunk):
            fa, fb = layer(fa), layer(fb)
            if index in (3, 8, 15, 22, 29):
                na = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
                nb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
                total += ((na - nb) ** 2 * next(taps)).sum(1).mean((1, 2))
    return total.double()


def test_piq_vgg_avg_matches_independent_computation_and_differs_from_lpips_vgg():
    dist, ref = anchor_pair("astronaut")
    dist, ref = dist[:64, :96], ref[:64, :96]
    x_hat, x = to_pm1(dist), to_pm1(ref)
    ours = Metrics("piq-vgg-avg")(x_hat, x)["lpips"]
    expected = independent_piq_lpips(torch.from_numpy(dist).permute(2, 0, 1)[None],
                                      torch.from_numpy(ref).permute(2, 0, 1)[None])
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-6), (ours, expected)
    assert torch.equal(Metrics("piq-vgg-avg")(x, x_hat)["lpips"], ours)  # symmetric
    maxpool = Metrics("vgg")(x_hat, x)["lpips"]
    assert (ours - maxpool).abs().item() > 1e-2  # average pooling changes the value


def test_piq_module_uses_average_pooling_and_imagenet_normalisation():
    net = PiqLpipsVggAvg(lpips_weights.load_features("vgg"), lpips_heads("vgg"))
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    assert sum(isinstance(m, torch.nn.AvgPool2d) for m in net.modules()) == 4  # pool5 comes after relu5_3
    assert net.EPS == 1e-10 and net.TAPS == (3, 8, 15, 22, 29)


def test_card_states_every_convention():
    card = Metrics("piq-vgg-avg", ssim="y").card()
    assert set(card) >= {"value_range", "psnr", "ssim", "lpips", "noise_units"}
    assert card["noise_units"] == "[-1,1] pixel std; 0.05 here = 0.025 on [0,1]"
    assert "100 dB" in card["psnr"] and "never +inf" in card["psnr"] and "clip((x+1)/2, 0, 1)" in card["value_range"]
    assert all(s in card["ssim"] for s in ("11x11", "sigma 1.5", "k1=0.01", "k2=0.03", "reflect", "0.299"))
    assert "average pool" in card["lpips"] and "ImageNet mean/std" in card["lpips"]
    alex = Metrics().card()["lpips"]
    assert "AlexNet" in alex and "lpips package 0.1.4" in alex and "[-1,1]" in alex
    assert "RGB" in Metrics().card()["ssim"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_lpips_runs_on_the_gpu_and_agrees_with_cpu():
    x, y = smooth_images(2, 64, 64, 7), smooth_images(2, 64, 64, 8)
    cpu = Metrics()(x, y)
    gpu = Metrics()(x.cuda(), y.cuda())
    from bench.metrics import official_lpips
    assert next(official_lpips("alex", str(x.cuda().device)).parameters()).is_cuda
    for key in cpu:
        assert torch.allclose(cpu[key], gpu[key], rtol=1e-4, atol=1e-5), key
