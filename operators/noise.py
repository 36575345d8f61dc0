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


def draw_device(generator: torch.Generator | None, like: Tensor) -> torch.device:
    """Where noise for `like` is drawn: on `like`'s device when the generator lives there (or is None, or
    `like` is on the meta device, which has no generators: the device audit), else on the generator's
    device (CPU streams on a GPU run: `rng_device: cpu`), followed by one copy."""
    if generator is None or like.device.type == "meta" or generator.device == like.device:
        return like.device
    return generator.device


def randn_per_image(like: Tensor, generator: Generators) -> Tensor:
    """Standard normal noise shaped like `like`; a list of generators draws image i from generator i.

    Image i's numbers come from generator i alone (one `normal_` fill of row i of one preallocated
    output, the same numbers as `torch.randn(like.shape[1:], generator=g_i)`), so they never depend on
    the rest of the batch. Drawn where `draw_device` says: on `like`'s device for generators living
    there (no host work, no copy); CPU generators with a tensor on another device draw on the CPU and
    the batch is copied once (the same numbers on every device).
    """
    if generator is None or isinstance(generator, torch.Generator):
        device = draw_device(generator, like)
        out = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=device)
        return out if device == like.device else out.to(like.device)
    gens = list(generator)
    if len(gens) != like.shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {like.shape[0]}; pass one per image")
    devices = {draw_device(g, like) for g in gens}
    if len(devices) != 1:
        raise ValueError(f"the generators of one batch live on different devices ({sorted(map(str, devices))}); "
                         f"create them all on one device (bench/seeding.py `device=`)")
    device = devices.pop()
    out = torch.empty(like.shape, dtype=like.dtype, device=device)
    for row, g in zip(out, gens):
        row.normal_(generator=g)
    return out if device == like.device else out.to(like.device)


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
