"""Random motion-blur kernels: our reimplementation of the LeviBorodenko `motionblur` generator.

Spec solvers-baselines.md §2.3 (the package DPS, SPGD and DAPS use, size 61, intensity 0.5). Draw
for draw identical to the reference given the numpy seed: all randomness comes from a legacy
`numpy.random.RandomState` (`uniform`, `beta`, `triangular` in the reference's order), so
`np.random.seed(s)` + reference and `motion_kernel_from_seed(s, draw=1)` give the same kernel.
Rasterisation uses Pillow exactly as the reference (RGB canvas at 2x size, polyline of width
floor(diag/150), GaussianBlur(floor(0.01 diag)), LANCZOS resize, 8-bit grey, divided by its sum);
the kernel values therefore depend on the Pillow version (checked with Pillow 13).

"The operator uses the second kernel drawn": DPS's `MotionBlurOperator` constructor builds a
`Blurkernel` (which draws one kernel) and then draws the kernel it actually uses, so the kernel of
an operator built right after seeding is the 2nd draw (`REFERENCE_DRAW = 2`).
"""
from __future__ import annotations

from math import pi

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

EPS = 0.1  # the reference's constant "eps"
REFERENCE_DRAW = 2
MIN_SIZE = 54  # below this the reference's line width floor(2 sqrt(2) size / 150) is 0: empty kernels


def _path(rs: np.random.RandomState, canvas: tuple[int, int], intensity: float) -> list[tuple[float, float]]:
    x, y = canvas
    diagonal = (x ** 2 + y ** 2) ** 0.5
    max_len = 0.75 * diagonal * (rs.uniform() + rs.uniform(0, intensity ** 2))
    steps: list[float] = []
    total = 0
    while total < max_len:  # the reference recomputes sum(steps): same left-to-right sum
        step = rs.beta(1, 30) * (1 - intensity + EPS) * diagonal
        if step < max_len:
            steps.append(step)
            total = total + step
    max_angle = rs.uniform(0, intensity * pi)
    jitter = rs.beta(2, 20)
    angles = [rs.uniform(low=-max_angle, high=max_angle)]
    while len(angles) < len(steps):
        angle = rs.triangular(0, intensity * max_angle, max_angle + EPS)
        if rs.uniform() < jitter:
            angle *= -np.sign(angles[-1])
        else:
            angle *= np.sign(angles[-1])
        angles.append(angle)
    points = np.cumsum(np.asarray(steps) * np.exp(1j * np.asarray(angles)))
    centre_of_mass = sum(points) / len(steps)
    points = points - centre_of_mass
    points = points * np.exp(1j * rs.uniform(0, pi))
    points = points + (x + 1j * y) / 2
    return [(p.real, p.imag) for p in points]


def motion_kernel(rs: np.random.RandomState, size: int = 61, intensity: float = 0.5) -> np.ndarray:
    """One kernel (size, size) float32 summing to 1, drawn from `rs` (advances it like the reference)."""
    if not 0 <= intensity <= 1:
        raise ValueError(f"motion-blur intensity must be in [0, 1], got {intensity}")
    canvas = (2 * size, 2 * size)
    diagonal = (canvas[0] ** 2 + canvas[1] ** 2) ** 0.5
    path = _path(rs, canvas, intensity)
    image = Image.new("RGB", canvas)
    ImageDraw.Draw(image).line(xy=path, width=int(diagonal / 150))
    image = image.filter(ImageFilter.GaussianBlur(radius=int(diagonal * 0.01)))
    image = image.resize((size, size), resample=Image.Resampling.LANCZOS).convert("L")
    kernel = np.asarray(image, dtype=np.float32).copy()
    if not kernel.any():
        raise ValueError(f"motion kernel of size {size} is empty: the reference draws a line of width "
                         f"floor(diag/150) = {int(diagonal / 150)}; use size >= {MIN_SIZE}")
    kernel /= np.sum(kernel)
    return kernel


def motion_kernel_from_seed(seed: int, size: int = 61, intensity: float = 0.5,
                            draw: int = REFERENCE_DRAW) -> np.ndarray:
    """The `draw`-th kernel (1-based) after seeding: draw=2 is what the reference operator uses."""
    if draw < 1:
        raise ValueError(f"kernel_draw must be >= 1 (1-based), got {draw}")
    rs = np.random.RandomState(seed)
    for _ in range(draw):
        kernel = motion_kernel(rs, size, intensity)
    return kernel
