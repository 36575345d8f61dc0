"""`phase_retrieval`: |F(pad(x))| with oversampling 2.0, spec solvers-baselines.md §2.5, solvers-seed.md §2.8.

Zero-pad by floor(oversample / 8 * H) rows (and likewise columns) on every side (64 at 256 -> 384x384),
then the magnitude of the centred orthonormal 2-D FFT (ifftshift -> fft2(norm="ortho") -> fftshift).
Variants: "dps" (DPS, DPPS, DCDP) applies it to the [-1, 1] image directly; "spgd" / "daps" map the
image to [0, 1] (x/2 + 1/2) first. Nonlinear (no adjoint). A benchmark protocol must state `variant` (the default
is the DPS family's form; SPGD / DAPS settings need "spgd"): `protocol_must_state`.
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F

from operators.base import Operator, OperatorError, Tensor

VARIANTS = {"dps": False, "spgd": True, "daps": True}


class PhaseRetrieval(Operator):
    """`phase_retrieval`: (B, C, H, W) -> (B, C, H + 2 pad_h, W + 2 pad_w) Fourier magnitudes."""

    name = "phase_retrieval"
    #: a protocol must say which convention it measures with (operators.base.must_state, bench/protocol.py)
    protocol_must_state: ClassVar[dict[str, str]] = {
        "variant": "dps (DPS, DPPS, DCDP: |F(pad(x))| of the [-1, 1] image; the operator's default) or spgd / daps "
                   "(SPGD, DAPS: of (x + 1) / 2, the form their step sizes are tuned for)"}

    def __init__(self, image_shape: Sequence[int] = (3, 256, 256), sigma_y: float = 0.0,
                 seeds: Sequence[int] | None = None, shared_params: bool = False,
                 oversample: float = 2.0, variant: str = "dps") -> None:
        super().__init__(image_shape, sigma_y, seeds, shared_params)
        if variant not in VARIANTS:
            raise OperatorError(f"{self.name}: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if oversample < 0:
            raise OperatorError(f"{self.name}: oversample must be >= 0, got {oversample}")
        self.variant, self.oversample = variant, float(oversample)
        _, h, w = self.image_shape
        self.pad_h, self.pad_w = int(self.oversample / 8.0 * h), int(self.oversample / 8.0 * w)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if VARIANTS[self.variant]:
            x = x / 2 + 0.5
        padded = F.pad(x, (self.pad_w, self.pad_w, self.pad_h, self.pad_h))
        spectrum = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(padded, dim=(-2, -1)), norm="ortho"),
                                      dim=(-2, -1))
        return spectrum.abs()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "oversample": self.oversample, "variant": self.variant,
                "pad": [self.pad_h, self.pad_w]}
