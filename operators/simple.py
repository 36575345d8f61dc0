"""`denoise` (identity) and `hdr` (clip(2x, -1, 1)), spec solvers-baselines.md §2.5, solvers-seed.md §2.8."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from operators.base import SVD, LinearOperator, Operator, Tensor
from operators.linalg import expand_per_image


class IdentitySVD(SVD):
    """U = V = I (image flattened pixel-major, channel-minor, as DDRM), s = 1."""

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(shape)
        self.n = self.m = self.shape[0] * self.shape[1] * self.shape[2]
        self._singulars = torch.ones(1, self.n, dtype=torch.float64)

    def Vt(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], self.n)

    def V(self, v: Tensor) -> Tensor:
        c, h, w = self.shape
        return v.reshape(v.shape[0], h, w, c).permute(0, 3, 1, 2).contiguous()

    U = V
    Ut = Vt

    def singulars(self, batch: int | None = None) -> Tensor:
        return self._singulars if batch is None else self._singulars.expand(batch, -1)


class Denoise(LinearOperator):
    """`denoise`: A = I."""

    name = "denoise"

    def __init__(self, image_shape: Sequence[int] = (3, 256, 256), sigma_y: float = 0.0,
                 seeds: Sequence[int] | None = None, shared_params: bool = False) -> None:
        super().__init__(image_shape, sigma_y, seeds, shared_params)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return x

    adjoint = forward
    pinv = forward

    def prox(self, z: Tensor, y: Tensor, rho: float | Tensor, **_: Any) -> Tensor:
        """(y + rho z) / (1 + rho)."""
        self.check_input(z)
        r = expand_per_image(rho, z)
        return (y + r * z) / (1 + r)

    @property
    def svd(self) -> IdentitySVD:
        return IdentitySVD(self.image_shape)


class HDR(Operator):
    """`hdr`: A(x) = clip(2x, -1, 1) (nonlinear; SPGD/DAPS high-dynamic-range task)."""

    name = "hdr"

    def __init__(self, image_shape: Sequence[int] = (3, 256, 256), sigma_y: float = 0.0,
                 seeds: Sequence[int] | None = None, shared_params: bool = False, scale: float = 2.0) -> None:
        super().__init__(image_shape, sigma_y, seeds, shared_params)
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return torch.clamp(self.scale * x, -1, 1)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scale": self.scale}
