"""Gaussian denoisers for plug-and-play solvers: our DnCNN port of SCICO's trained models.

DnCNN (Zhang et al., "Beyond a Gaussian denoiser", IEEE TIP 2017) as trained and shipped by SCICO
(lanl/scico, BSD-3; files `scico/data/flax/dncnn{6,17}{L,M,H,N}.mpk`, scico-data README): grey-scale,
images in [0, 1], `depth` 3x3 convolutions with circular padding and no bias, 64 filters, BatchNorm
(eps 1e-5, running statistics) + ReLU between, residual output D(x) = x - net(x). L/M/H were trained
at noise std 0.06 / 0.10 / 0.20 on [0, 1]; N takes the noise std as a second, constant input channel
(trained for std in [0, 0.2]). Colour images are denoised one channel at a time (as SCICO does).

Chosen variant for PnP-ADMM: **17M** (see `DEFAULT_VARIANT`): it is the denoiser of the SCICO PnP
recipe that the PnP-ADMM baseline follows (spec solvers-baselines §7.1: rho 0.2, 10 iterations,
DnCNN "17M"), and in the offline-setup measurements (spec offline-setup §3, astronaut 256x256, PSNR dB)
the blind 17-layer model beats the sigma-input 17N at sigma 25/255 (30.48 vs 29.51) and 50/255
(26.53 H vs 22.20), i.e. around and above the noise levels PnP-ADMM feeds its denoiser; 17N only wins
at 15/255. The ADMM noise level that a fixed-strength denoiser stands in for is sigma_y / sqrt(rho)
(Chan et al. 2016: strength sqrt(lambda/rho) with lambda = sigma_y^2): for Table 1 (sigma_y 0.05 on
[-1, 1] = 0.025 on [0, 1], rho 0.2) that is 0.056 on [0, 1], between L (0.06) and M (0.10). Measured with
our PnP-ADMM (10 iterations, rho 0.2, sigma_y 0.05, 128x128 crops of astronaut / coffee / chelsea, mean PSNR dB):
Gaussian deblur 17L 26.44, 17M 26.18, 17H 25.22, 17N(0.056) 24.72, 17N(0.10) 25.36; SR x4 17L 24.77,
17M 24.72, 17H 21.68, 17N(0.056) 25.31, 17N(0.10) 24.76. 17M is within 0.3 dB of the best blind variant,
avoids 17N's collapse at higher noise, and is the recipe's: we keep it (YAML `dncnn_variant` switches).

Weights: `install_weights()` (called by the setup step) converts the SCICO msgpack file to a torch
file `<cache>/dncnn/dncnn<variant>.pt` (cache = $RESTOREBENCH_CACHE or torch.hub.get_dir()/restorebench)
atomically, after checking the source file's sha256 against `SOURCE_SHA256` (scico 0.0.7); the
converted file records that sha256 and has a `.sha256` side file, both checked at load time.
`load_dncnn(variant)` reads the converted file, or converts on the fly (offline) when it is missing.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.fileio import atomic_write, sha256_file

Tensor = torch.Tensor

DEFAULT_VARIANT = "17M"
#: sha256 of the SCICO 0.0.7 source files (scico/data/flax/dncnn<variant>.mpk)
SOURCE_SHA256 = {
    "6L": "f9c4d897d9051377bb5523301b28197b8bccb08a651a652624753eacdefbec19",
    "6M": "91a4c184bd67a44b4ca717ffdfadda77c54762abfc672236b481cdc98c0a9b68",
    "6H": "cdd0a720adf45523be646867a28b36386a4d6b3b94986f6f982d835934508007",
    "6N": "e30dcdd9f5c35a36598560b95b759f35506632c35fc2acf361731f1e8e00d899",
    "17L": "640d7a1f74d88fba6af6b05882049d1fdf44372d039aead1c491266c3fe5ef23",
    "17M": "1b92262ccb8d7c9fc6cb7328fd1e0922499d2325afba65c2b161556deb7447cf",
    "17H": "f3178a60f871ae5c4f423a5a9cc0158206375b568d272c79a30640e3a1737507",
    "17N": "92f6710a43588ceab25275eaedceda81bca99f814c3f825651087a4e24a71ad7",
}
#: training noise std on [0, 1] of the blind variants (scico-data README)
TRAINED_SIGMA = {"L": 0.06, "M": 0.10, "H": 0.20}
_FORMAT = "restorebench-dncnn-v1"


class WeightsError(RuntimeError):
    """Missing, corrupted or unconvertible denoiser weights (the message names the fix)."""


# ---------------------------------------------------------------------------------- the network
class DnCNN(nn.Module):
    """DnCNN on (N, 1, H, W) images in [0, 1]; `sigma_input` adds the constant noise-std channel (N variants)."""

    def __init__(self, depth: int, sigma_input: bool = False, features: int = 64) -> None:
        super().__init__()
        self.depth = depth
        self.sigma_input = sigma_input
        channels = 2 if sigma_input else 1

        def conv(c_in: int, c_out: int) -> nn.Conv2d:
            return nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="circular", bias=False)

        layers: list[nn.Module] = [conv(channels, features), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [conv(features, features), nn.BatchNorm2d(features, eps=1e-5), nn.ReLU()]
        layers.append(conv(features, channels))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor, sigma: float | Tensor | None = None) -> Tensor:
        if self.sigma_input:
            if sigma is None:
                raise ValueError("this DnCNN variant takes the noise std as input: pass sigma (on [0, 1])")
            s = sigma.to(dtype=x.dtype, device=x.device) if isinstance(sigma, Tensor) else x.new_full((), float(sigma))
            s = s.view(-1, 1, 1, 1).expand_as(x) if s.ndim else s.expand_as(x)
            return x - self.body(torch.cat([x, s], dim=1))[:, :1]
        return x - self.body(x)

    def denoise_image(self, x: Tensor, sigma: float | Tensor | None = None) -> Tensor:
        """Denoise a (B, C, H, W) image in [-1, 1], one channel at a time; sigma ([0, 1] units) only for N."""
        b, c, h, w = x.shape
        u = ((x + 1) / 2).reshape(b * c, 1, h, w)
        if sigma is not None and torch.as_tensor(sigma).ndim:
            sigma = torch.as_tensor(sigma).repeat_interleave(c)
        with torch.no_grad():
            out = self(u, sigma)
        return (2 * out - 1).reshape(b, c, h, w)


# ---------------------------------------------------------------------------------- SCICO msgpack
def _msgpack_ext_hook(code: int, data: bytes) -> Any:
    import msgpack

    if code == 1:  # flax ndarray: (shape, dtype name, raw bytes)
        shape, dtype, buf = msgpack.unpackb(data, raw=False)
        return np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape)
    if code == 3:  # numpy scalar: (dtype name, raw bytes)
        dtype, buf = msgpack.unpackb(data, raw=False)
        return np.frombuffer(buf, dtype=np.dtype(dtype))[0]
    return msgpack.ExtType(code, data)


def read_mpk(path: Path) -> dict[str, Any]:
    """The variables dict {"params": ..., "batch_stats": ...} of a flax msgpack file."""
    try:
        import msgpack
    except ImportError:
        raise WeightsError("reading SCICO DnCNN weights needs `msgpack`: pip install msgpack") from None
    with open(path, "rb") as f:
        return msgpack.unpackb(f.read(), ext_hook=_msgpack_ext_hook, raw=False, strict_map_key=False)


def state_dict_from_scico(variables: dict[str, Any], depth: int, sigma_input: bool) -> dict[str, Tensor]:
    """Map flax names/layouts to our DnCNN: conv kernels HWIO -> OIHW, BatchNorm scale/bias/mean/var."""
    params, stats = variables["params"], variables["batch_stats"]
    blocks = sorted((k for k in params if k.startswith("ConvBNBlock_")), key=lambda s: int(s.split("_")[1]))
    if len(blocks) != depth - 2:
        raise WeightsError(f"expected {depth - 2} ConvBNBlocks in the SCICO file, found {len(blocks)}")

    def kernel(a: Any) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.float32).transpose(3, 2, 0, 1)))

    def vec(a: Any) -> Tensor:
        return torch.from_numpy(np.array(a, dtype=np.float32))

    model = DnCNN(depth, sigma_input)
    convs = [i for i, m in enumerate(model.body) if isinstance(m, nn.Conv2d)]
    norms = [i for i, m in enumerate(model.body) if isinstance(m, nn.BatchNorm2d)]
    sd: dict[str, Tensor] = {f"body.{convs[0]}.weight": kernel(params["conv_start"]["kernel"]),
                             f"body.{convs[-1]}.weight": kernel(params["conv_end"]["kernel"])}
    for j, block in enumerate(blocks):
        bn = params[block]["BatchNorm_0"]
        st = stats[block]["BatchNorm_0"]
        sd[f"body.{convs[j + 1]}.weight"] = kernel(params[block]["Conv_0"]["kernel"])
        sd[f"body.{norms[j]}.weight"] = vec(bn["scale"])
        sd[f"body.{norms[j]}.bias"] = vec(bn["bias"])
        sd[f"body.{norms[j]}.running_mean"] = vec(st["mean"])
        sd[f"body.{norms[j]}.running_var"] = vec(st["var"])
        sd[f"body.{norms[j]}.num_batches_tracked"] = torch.tensor(0)
    model.load_state_dict(sd)  # strict: every tensor present with the right shape
    return model.state_dict()


# ---------------------------------------------------------------------------------- files
def _parse_variant(variant: str) -> tuple[int, bool]:
    if variant not in SOURCE_SHA256:
        raise WeightsError(f"unknown DnCNN variant {variant!r}; choose one of {sorted(SOURCE_SHA256)}")
    return int(variant[:-1]), variant.endswith("N")


def cache_dir() -> Path:
    """$RESTOREBENCH_CACHE, else torch.hub.get_dir()/restorebench."""
    env = os.environ.get("RESTOREBENCH_CACHE")
    return Path(env) if env else Path(torch.hub.get_dir()) / "restorebench"


def converted_path(variant: str = DEFAULT_VARIANT) -> Path:
    return cache_dir() / "dncnn" / f"dncnn{variant}.pt"


def scico_source(variant: str) -> Path:
    """Path of SCICO's shipped .mpk file; a clear error if scico is not installed."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("scico")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"DnCNN weights {converted_path(variant)} are not converted yet and the `scico` package that ships "
            "them is not installed. Fix: `pip install --no-deps scico==0.0.7 msgpack`, then run the setup step "
            "(`python -c 'from solvers.pnp_denoisers import install_weights; install_weights()'`)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "flax" / f"dncnn{variant}.mpk"
    if not path.exists():
        raise WeightsError(f"scico is installed but {path} is missing; reinstall scico==0.0.7 (--no-deps)")
    return path


def convert_variant(variant: str = DEFAULT_VARIANT) -> Path:
    """Convert SCICO's dncnn<variant>.mpk to our torch file (source sha256 checked); returns its path."""
    depth, sigma_input = _parse_variant(variant)
    source = scico_source(variant)
    digest = sha256_file(source)
    if digest != SOURCE_SHA256[variant]:
        raise WeightsError(f"{source} has sha256 {digest}, expected {SOURCE_SHA256[variant]} (scico 0.0.7); "
                           "reinstall scico==0.0.7 or update SOURCE_SHA256 after checking the new file")
    state = state_dict_from_scico(read_mpk(source), depth, sigma_input)
    payload = {"format": _FORMAT, "variant": variant, "source": f"scico/data/flax/{source.name}",
               "source_sha256": digest, "state_dict": state}
    target = converted_path(variant)
    buffer = io.BytesIO()
    torch.save(payload, buffer)  # in memory: the bytes (and checksum) do not depend on a file name
    data = buffer.getvalue()
    # checksum side file first, so a concurrent reader never finds a new file without its checksum
    atomic_write(target.with_name(target.name + ".sha256"),
                  lambda tmp: Path(tmp).write_text(hashlib.sha256(data).hexdigest() + "\n"))
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))
    return target


def install_weights(variants: tuple[str, ...] = (DEFAULT_VARIANT,)) -> None:
    """Setup step (bench/assets.py): convert the PnP denoiser weights into the cache, verifying checksums."""
    for variant in variants:
        path = converted_path(variant)
        try:
            _read_converted(path, variant)
        except WeightsError:
            convert_variant(variant)
            _read_converted(path, variant)


def _read_converted(path: Path, variant: str) -> dict[str, Tensor]:
    if not path.exists():
        raise WeightsError(f"{path} does not exist")
    side = path.with_name(path.name + ".sha256")
    if not side.exists() or side.read_text().strip() != sha256_file(path):
        raise WeightsError(f"{path}: checksum missing or wrong (file corrupted?); delete it and run "
                           "`install_weights()` again")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != _FORMAT or payload.get("variant") != variant \
            or payload.get("source_sha256") != SOURCE_SHA256[variant]:
        raise WeightsError(f"{path} was not converted from the expected scico file (variant {variant}, "
                           f"sha256 {SOURCE_SHA256[variant]}); delete it and run `install_weights()` again")
    return payload["state_dict"]


def load_dncnn(variant: str = DEFAULT_VARIANT) -> DnCNN:
    """The converted DnCNN in eval mode; converts from scico on the fly (offline) if the file is missing."""
    depth, sigma_input = _parse_variant(variant)
    path = converted_path(variant)
    if not path.exists():
        convert_variant(variant)
    model = DnCNN(depth, sigma_input)
    model.load_state_dict(_read_converted(path, variant))
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------- process cache
#: verified state dict and sha256 per converted weights file, keyed by the file's identity (path, inode, size,
#: mtime): read and hashed once per process, again only when the file is replaced
_STATES: dict[tuple[str, int, int, int], tuple[dict[str, Tensor], str]] = {}
#: the built network per (file identity, variant, device)
_MODELS: dict[tuple[tuple[str, int, int, int], str, str], DnCNN] = {}


def _file_identity(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns


def dncnn_weights(variant: str = DEFAULT_VARIANT) -> tuple[Path, str]:
    """(converted weights file, its sha256) of `variant`, loaded and verified once per process per file
    (converts from scico on the fly when missing, as `load_dncnn`)."""
    path = converted_path(variant)
    if not path.exists():
        convert_variant(variant)
    key = _file_identity(path)
    if key not in _STATES:
        state = _read_converted(path, variant)  # verifies the .sha256 side file against the bytes
        digest = path.with_name(path.name + ".sha256").read_text().strip()
        _STATES[key] = (state, digest)
    return path, _STATES[key][1]


def cached_dncnn(variant: str = DEFAULT_VARIANT, device: torch.device | str = "cpu") -> DnCNN:
    """The DnCNN of `variant` on `device` in eval mode, built once per process per (weights file, device):
    PnP-ADMM calls this for every batch without re-reading or re-hashing the file."""
    path, _ = dncnn_weights(variant)
    identity = _file_identity(path)
    key = (identity, variant, str(torch.device(device)))
    if key not in _MODELS:
        depth, sigma_input = _parse_variant(variant)
        model = DnCNN(depth, sigma_input)
        model.load_state_dict(_STATES[identity][0])
        _MODELS[key] = model.eval().requires_grad_(False).to(device)
    return _MODELS[key]


def clear_dncnn_cache() -> None:
    """Forget the loaded DnCNN weights and networks (tests; a long-lived process that wants to re-verify)."""
    _STATES.clear()
    _MODELS.clear()
