"""Measurement noise: the one mechanism `Operator.measure` uses (y = A(x) + sigma n).

RestoreBench states every noise level as a standard deviation in **[-1, 1] pixel units** (the
DPS/SPGD convention). The repositories the benchmark compares mean different things by the same
number (spec solvers-baselines.md §0.1):

| repo / CLI value "0.05"                   | noise actually added             | std on [-1,1] | std on [0,1] |
|-------------------------------------------|----------------------------------|---------------|--------------|
| DPS `noise.sigma: 0.05`                   | y + 0.05 n, x in [-1,1]          | 0.05          | 0.025        |
| SPGD / DAPS `operator.sigma`              | same as DPS                      | sigma         | sigma / 2    |
| DDRM `--sigma_0 0.05`                     | sigma_0 <- 2 * 0.05 on [-1,1]    | 0.10          | 0.05         |
| DiffPIR `noise_level_img = 12.75/255`     | N(0, (2 * 0.05)^2) on [-1,1]     | 0.10          | 0.05         |
| RED-diff `algo.sigma_y = 0.05`            | y + 2 * 0.05 n on [-1,1]         | 0.10          | 0.05         |

So `GaussianNoise(0.05)` here is DPS's 0.05, DDRM's / RED-diff's CLI value 0.025 and DiffPIR's
sigma_n = 0.025 (on [0,1]). Solvers convert `A.sigma_y` to their own convention in one place.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

Tensor = torch.Tensor
Generators = torch.Generator | Sequence[torch.Generator] | None


def randn_per_image(like: Tensor, generator: Generators) -> Tensor:
    """Standard normal noise shaped like `like`; a list of generators draws image i from generator i.

    Draws on the CPU (so a seeded torch.Generator gives the same numbers on every device), then moves
    the result to `like`'s device and dtype.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device="cpu").to(like.device)
    gens = list(generator)
    if len(gens) != like.shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {like.shape[0]}")
    return torch.stack([torch.randn(like.shape[1:], generator=g, dtype=like.dtype) for g in gens]).to(like.device)


class GaussianNoise:
    """Additive white Gaussian noise y + sigma n, sigma in [-1, 1] pixel units (see module docstring)."""

    def __init__(self, sigma: float = 0.0) -> None:
        if sigma < 0:
            raise ValueError(f"noise std must be >= 0, got {sigma}")
        self.sigma = float(sigma)

    def __call__(self, y: Tensor, generator: Generators = None) -> Tensor:
        """y + sigma n; a list of generators gives each image its own noise stream."""
        if self.sigma == 0:
            return y
        return y + self.sigma * randn_per_image(y, generator)

    @property
    def sigma_unit_range(self) -> float:
        """The same std on the [0, 1] image scale (DDRM / DiffPIR / RED-diff CLI convention)."""
        return self.sigma / 2

    def describe(self) -> dict[str, Any]:
        return {"noise": "gaussian", "sigma_y": self.sigma, "noise_units": "[-1,1] pixel std",
                "sigma_y_on_0_1": self.sigma_unit_range}

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma} on [-1,1])"
