"""`deblur_nonlinear`: the BKSE learned blur (DPS / SPGD "nonlinear_blur"), spec solvers-baselines.md §2.5,
solvers-seed.md §2.8.

A(x) = clip(2 * KernelWizard.adaptKernel((x + 1) / 2, kappa) - 1, -1, 1) with the pretrained BKSE
`GOPRO_wVAE.pth` weights (Tran et al., CVPR 2021, github.com/VinAIResearch/blur-kernel-space-exploring;
network: operators/bkse_kernel_wizard.py) and a latent kernel kappa = 1.2 * xi, xi ~ N(0, I) of shape
(1, 512, H/128, W/128) = (1, 512, 2, 2) for 256 x 256 images (the U-Net bottleneck of the network).
`latent_mode` chooses where xi comes from (numpy legacy RNG, float64 draws cast to the image dtype):
* "per_image" (default): fixed, drawn from each image's seed (`RandomState(seed).randn`), or from
  seeds[0] with shared_params=True; an image with seed 0 gets the SPGD kernel;
* "spgd": SPGD / DAPS, one xi for every image: `np.random.seed(0); np.random.randn(1, 512, 2, 2)`;
* "per_call": DPS, xi redrawn on every forward call (so y and every guidance evaluation see different
  blurs, spec §10.11), here from per-image streams seeded with the image seeds (DPS draws unseeded); the
  first call uses the "per_image" kernel. With repeated indices in `select`, repeats share a stream.
The weights are external and never downloaded at run time: pass `weights=PATH`, or put the file at
$RESTOREBENCH_CHECKPOINTS/GOPRO_wVAE.pth (default ./checkpoints/GOPRO_wVAE.pth). They are loaded strictly
(every name and shape must match) and cached per file, so rebuilding the operator per batch is cheap.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from operators.base import Operator, OperatorError, Tensor
from operators.bkse_kernel_wizard import LATENT_STRIDE, KernelWizard

WEIGHTS_FILE = "GOPRO_wVAE.pth"
WEIGHTS_SOURCE = ("the BKSE pretrained models (github.com/VinAIResearch/blur-kernel-space-exploring, README "
                  "'pretrained models'; DPS's README links the same file)")
LATENT_MODES = ("per_image", "spgd", "per_call")
LATENT_SCALE = 1.2
LATENT_CHANNELS = 512

_NETWORKS: dict[tuple, KernelWizard] = {}  # (path, size, mtime) -> the network on the CPU


def default_weights_path() -> Path:
    root = os.environ.get("RESTOREBENCH_CHECKPOINTS", "checkpoints")
    return Path(root) / WEIGHTS_FILE


def latent_kernel(seed: int, shape: tuple[int, int] = (2, 2)) -> np.ndarray:
    """kappa = 1.2 * randn(1, 512, *shape) right after seeding numpy (legacy RNG)."""
    return draw_latent(np.random.RandomState(seed), shape)


def draw_latent(rs: np.random.RandomState, shape: tuple[int, int] = (2, 2)) -> np.ndarray:
    """The next latent kernel 1.2 * randn(1, 512, *shape) of a numpy stream."""
    return LATENT_SCALE * rs.randn(1, LATENT_CHANNELS, *shape)


def state_dict_mismatch(expected: dict[str, Tensor], got: dict[str, Any]) -> str:
    """'' when `got` has exactly the names and shapes of `expected`, else what differs (a few names each)."""
    def some(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k} {tuple(got[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in got and tuple(getattr(got[k], "shape", ())) != tuple(v.shape)]
    parts = [f"{label} {some(names)}" for label, names in
             (("missing keys:", missing), ("unexpected keys:", unexpected), ("wrong shapes:", shapes)) if names]
    return "; ".join(parts)


def load_kernel_wizard(path: Path, task: str = "deblur_nonlinear") -> KernelWizard:
    """The KernelWizard with the weights of `path` (strict names and shapes; frozen, eval mode; cached)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _NETWORKS:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated or not a torch file: name it, never fall back silently
            raise OperatorError(f"{task}: could not read {path} as a torch checkpoint ({err}); "
                                f"re-download {WEIGHTS_FILE} from {WEIGHTS_SOURCE}") from None
        if isinstance(state, dict) and isinstance(state.get("params"), dict):
            state = state["params"]
        if not isinstance(state, dict):
            raise OperatorError(f"{task}: {path} holds a {type(state).__name__}, not a state dict; "
                                f"re-download {WEIGHTS_FILE} from {WEIGHTS_SOURCE}")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        with torch.device("meta"):
            net = KernelWizard()
        problems = state_dict_mismatch(net.state_dict(), state)
        if problems:
            raise OperatorError(f"{task}: {path} is not the BKSE GOPRO_wVAE KernelWizard state dict ({problems}); "
                                f"re-download {WEIGHTS_FILE} from {WEIGHTS_SOURCE}")
        net.load_state_dict(state, strict=True, assign=True)
        net.requires_grad_(False).eval()
        _NETWORKS.clear()  # one file at a time: the network is 115 M parameters (460 MB)
        _NETWORKS[key] = net
    return _NETWORKS[key]


class DeblurNonlinear(Operator):
    """`deblur_nonlinear`: needs the external BKSE weights; a clear error names the file and the fix."""

    name = "deblur_nonlinear"
    batched_params = ("latent",)

    def __init__(self, image_shape: Sequence[int] = (3, 256, 256), sigma_y: float = 0.0,
                 seeds: Sequence[int] | None = None, shared_params: bool = False,
                 weights: str | os.PathLike | None = None, latent_mode: str = "per_image") -> None:
        super().__init__(image_shape, sigma_y, seeds, shared_params)
        if latent_mode not in LATENT_MODES:
            raise OperatorError(f"{self.name}: unknown latent_mode {latent_mode!r}; valid: {', '.join(LATENT_MODES)}")
        c, h, w = self.image_shape
        if c != 3 or h % LATENT_STRIDE or w % LATENT_STRIDE:
            raise OperatorError(f"{self.name}: the BKSE network takes RGB images whose sides are multiples of "
                                f"{LATENT_STRIDE} (the latent kernel is (512, H/{LATENT_STRIDE}, W/{LATENT_STRIDE}): "
                                f"(512, 2, 2) at 256x256), got image_shape={self.image_shape}")
        self.latent_mode = latent_mode
        self.latent_shape = (h // LATENT_STRIDE, w // LATENT_STRIDE)
        self.weights = Path(weights) if weights is not None else default_weights_path()
        seeds_used = [0] if latent_mode == "spgd" else self.param_seeds
        self.latent = torch.from_numpy(np.concatenate([latent_kernel(s, self.latent_shape) for s in seeds_used]))
        self._streams = None
        if latent_mode == "per_call":  # first call: the per-image kernels above
            self._streams = [np.random.RandomState(s) for s in seeds_used]
        self.network = self._load_network()
        self._device_networks: dict[torch.device, KernelWizard] = {}  # shared with select() copies

    def _load_network(self) -> KernelWizard:
        if not self.weights.is_file():
            raise OperatorError(
                f"{self.name}: the BKSE weights {WEIGHTS_FILE} were not found at {self.weights.resolve()}. "
                f"Download {WEIGHTS_FILE} from {WEIGHTS_SOURCE} and pass weights=PATH, or place it at "
                f"$RESTOREBENCH_CHECKPOINTS/{WEIGHTS_FILE} (default ./checkpoints/{WEIGHTS_FILE}).")
        return load_kernel_wizard(self.weights, self.name)

    def select(self, idx: Sequence[int] | Tensor) -> "DeblurNonlinear":
        new = super().select(idx)
        if self._streams is not None and len(self._streams) > 1:
            new._streams = [self._streams[int(i)] for i in torch.as_tensor(idx).reshape(-1)]
        return new

    @property
    def state_dict(self) -> dict[str, Tensor]:
        """The loaded BKSE weights (the KernelWizard state dict)."""
        return self.network.state_dict()

    def network_on(self, device: torch.device) -> KernelWizard:
        """The network on `device` (a copy per device, made once per operator and shared by its selections)."""
        if device.type == "cpu":
            return self.network
        if device not in self._device_networks:
            self._device_networks[device] = copy.deepcopy(self.network).to(device)
        return self._device_networks[device]

    def current_latent(self, like: Tensor) -> Tensor:
        """The latent kernels of this call (P, 512, H/128, W/128): fixed, or the next draws ("per_call")."""
        if self._streams is None:
            return self.param("latent", like)
        latent = np.concatenate([draw_latent(rs, self.latent_shape) for rs in self._streams])
        return torch.from_numpy(latent).to(dtype=like.dtype, device=like.device)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        net = self.network_on(x.device)
        dtype = next(net.parameters()).dtype
        sharp = ((x + 1) / 2).to(dtype)
        blurred = net.adaptKernel(sharp, self.current_latent(sharp))
        return (2 * blurred - 1).clamp(-1, 1).to(x.dtype)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "weights": str(self.weights), "latent_mode": self.latent_mode,
                "latent_shape": [LATENT_CHANNELS, *self.latent_shape], "latent_scale": LATENT_SCALE}
