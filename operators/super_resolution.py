"""`sr4`: x4 bicubic downsampling with antialiasing, the MATLAB-`imresize`-style "Resizer" of DPS/SPGD.

Spec solvers-baselines.md §2.4 and §4.4: Keys cubic (a = -1/2) stretched by the factor f (antialiasing),
output o (0-based) centred at input coordinate c_o = f*o + (f - 1)/2 (= 4o + 1.5 for f = 4), weights
w_{o,j} proportional to cubic((j - c_o)/f) over the support |j - c_o| <= 2f, normalised to sum 1,
indices outside the image mapped by half-sample symmetric reflection (-1 -> 0, H -> H - 1).
A(x)_c = R_h X_c R_w^T with R (H/f, H); exactly DDRM's `SRConv` bicubic matrix, so the SVD here is
the separable one of operators/separable.py (DDRM's 3e-2 threshold by default).
Interior 1-D taps for f = 4 (spec): -0.001709 ... 0.240967 0.240967 ... -0.001709 (16 taps).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from operators.base import OperatorError
from operators.separable import DDRM_ZERO, SeparableOperator


def keys_cubic(s: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel with parameter a (a = -0.5: MATLAB / Resizer)."""
    t = s.abs()
    near = (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    far = a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t <= 2, far, torch.zeros_like(t)))


def bicubic_downsample_matrix(n: int, factor: int) -> torch.Tensor:
    """(n // factor, n) float64 matrix of antialiased bicubic downsampling with half-sample reflection."""
    out = n // factor
    centres = factor * torch.arange(out, dtype=torch.float64) + (factor - 1) / 2
    first = torch.floor(centres - 2 * factor).long()
    width = 4 * factor + 2
    src = first[:, None] + torch.arange(width)[None]
    weights = keys_cubic((src.to(torch.float64) - centres[:, None]) / factor)
    weights = weights / weights.sum(1, keepdim=True)
    src = torch.where(src < 0, -src - 1, src)
    src = torch.where(src > n - 1, 2 * n - 1 - src, src)
    matrix = torch.zeros(out, n, dtype=torch.float64)
    rows = torch.arange(out)[:, None].expand_as(src)
    matrix.index_put_((rows.reshape(-1), src.reshape(-1)), weights.reshape(-1), accumulate=True)
    return matrix


class SuperResolution(SeparableOperator):
    """`sr4`: (B, C, H, W) -> (B, C, H/4, W/4) bicubic-AA Resizer (H, W divisible by `factor`).

    prox methods: "svd" (exact closed form through the separable SVD, default), "cg".
    `pinv` uses the SVD with `svd_threshold` (DDRM zeroes 1-D singular values below 3e-2).
    """

    name = "sr4"

    def __init__(self, image_shape: Sequence[int] = (3, 256, 256), sigma_y: float = 0.0,
                 seeds: Sequence[int] | None = None, shared_params: bool = False,
                 factor: int = 4, svd_threshold: float = DDRM_ZERO, prox_method: str = "svd") -> None:
        super().__init__(image_shape, sigma_y, seeds, shared_params)
        _, h, w = self.image_shape
        self.factor = int(factor)
        if self.factor < 1:
            raise OperatorError(f"{self.name}: factor must be a positive integer, got {factor}")
        if h % self.factor or w % self.factor:
            raise OperatorError(f"{self.name}: image size {h}x{w} is not divisible by the factor {self.factor}; "
                                f"crop or resize the images to a multiple of {self.factor}")
        self._set_prox_method(prox_method)
        self.svd_threshold = float(svd_threshold)
        self.rows = bicubic_downsample_matrix(h, self.factor)
        self.cols = bicubic_downsample_matrix(w, self.factor)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "factor": self.factor, "kernel": "bicubic (Keys a=-0.5), antialiased",
                "boundary": "half-sample symmetric"}


def interior_taps(factor: int = 4) -> torch.Tensor:
    """The nonzero 1-D taps of an interior output row (for checks against the spec's list)."""
    row = bicubic_downsample_matrix(16 * factor, factor)[8]
    return row[row != 0]

