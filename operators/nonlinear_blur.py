"""`deblur_nonlinear`: the BKSE learned blur (DPS / SPGD "nonlinear_blur"), spec solvers-baselines.md §2.5,
solvers-seed.md §2.8.

A(x) = clip(2 * KernelWizard.adaptKernel((x + 1) / 2, kappa) - 1, -1, 1) with the pretrained BKSE
`GOPRO_wVAE.pth` weights (Tran et al., CVPR 2021, github.com/VinAIResearch/blur-kernel-space-exploring)
and a latent kernel kappa = 1.2 * xi, xi in R^(1x512x2x2):
* "spgd" (default, SPGD/DAPS): xi fixed once from `np.random.seed(0); np.random.randn(1, 512, 2, 2)`;
* "per_image": xi drawn from each image's seed (DCDP-like; DPS redraws on every call, which we do not
  reproduce because it makes y and the guidance use different operators).
The weights are external and never downloaded at run time: pass `weights=PATH`, or put the file at
$RESTOREBENCH_CHECKPOINTS/GOPRO_wVAE.pth (default ./checkpoints/GOPRO_wVAE.pth).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from operators.base import Operator, OperatorError, Tensor

WEIGHTS_FILE = "GOPRO_wVAE.pth"
WEIGHTS_SOURCE = ("the BKSE pretrained models (github.com/VinAIResearch/blur-kernel-space-exploring, README "
                  "'pretrained models'; DPS's README links the same file)")
LATENT_MODES = ("spgd", "per_image")


def default_weights_path() -> Path:
    root = os.environ.get("RESTOREBENCH_CHECKPOINTS", "checkpoints")
    return Path(root) / WEIGHTS_FILE


def latent_kernel(seed: int) -> np.ndarray:
    """kappa = 1.2 * randn(1, 512, 2, 2) right after seeding numpy (legacy RNG)."""
    return 1.2 * np.random.RandomState(seed).randn(1, 512, 2, 2)


class DeblurNonlinear(Operator):
    """`deblur_nonlinear`: needs the external BKSE weights; a clear error names the file and the fix."""

    name = "deblur_nonlinear"
    batched_params = ("latent",)

    def __init__(self, image_shape: Sequence[int] = (3, 256, 256), sigma_y: float = 0.0,
                 seeds: Sequence[int] | None = None, shared_params: bool = False,
                 weights: str | os.PathLike | None = None, latent_mode: str = "spgd") -> None:
        super().__init__(image_shape, sigma_y, seeds, shared_params)
        if latent_mode not in LATENT_MODES:
            raise OperatorError(f"{self.name}: unknown latent_mode {latent_mode!r}; valid: {', '.join(LATENT_MODES)}")
        self.latent_mode = latent_mode
        self.weights = Path(weights) if weights is not None else default_weights_path()
        seeds_used = [0] if latent_mode == "spgd" else self.param_seeds
        self.latent = torch.from_numpy(np.concatenate([latent_kernel(s) for s in seeds_used]))
        self.state_dict = self._load_weights()

    def _load_weights(self) -> dict[str, Tensor]:
        if not self.weights.is_file():
            raise OperatorError(
                f"{self.name}: the BKSE weights {WEIGHTS_FILE} were not found at {self.weights.resolve()}. "
                f"Download {WEIGHTS_FILE} from {WEIGHTS_SOURCE} and pass weights=PATH, or place it at "
                f"$RESTOREBENCH_CHECKPOINTS/{WEIGHTS_FILE} (default ./checkpoints/{WEIGHTS_FILE}).")
        try:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated or not a torch file: name it, never fall back silently
            raise OperatorError(f"{self.name}: could not read {self.weights} as a torch checkpoint ({err}); "
                                f"re-download {WEIGHTS_FILE} from {WEIGHTS_SOURCE}") from None
        return state.get("params", state) if isinstance(state, dict) else state

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        raise OperatorError(
            f"{self.name}: the BKSE KernelWizard network is not part of this version of operators/ "
            f"(weights loaded from {self.weights}, but the architecture to run them is not implemented)")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "weights": str(self.weights), "latent_mode": self.latent_mode}
