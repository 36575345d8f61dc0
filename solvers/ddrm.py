"""DDRM — Denoising Diffusion Restoration Models (Kawar, Elad, Ermon, Song; NeurIPS 2022).

Source: spec solvers-baselines.md §4 (= `[DDRM]` bahjat-kawar/ddrm `functions/denoising.py
efficient_generalized_steps`, `runners/diffusion.py`, `main.py`; paper eqs. 7-8 agree with the code).
SPGD Table 1 protocol: 20 NFE, eta 0.85, eta_b 1.0 (`[SPGD-paper D.1]`).

Spectral setting: A = U diag(s) V^T from `A.svd` (singular values zero past the rank; the operator
decides its own cut-off, DDRM's is 3e-2). Work on the VE variable x~_k = x_k / sqrt(abar_k) with noise
level sigma_k = sqrt((1 - abar_k) / abar_k), in spectral coordinates v_bar = V^T v, y_bar = U^T y
(padded with zeros to n = C*H*W).

Timesteps (§4.2): skip = 1000 // T, k in (T-1)*skip, ..., skip, 0, then k' = -1 (sigma' = 0,
abar_{-1} = 1). T = 20: 950 -> 900 -> ... -> 0 -> -1, one network call per step.

Initialisation at k_0 (§4.3), per spectral index i, z ~ N(0, 1):
    s_i sigma > sigma_y:  x_bar_i = y_bar_i / s_i + sqrt(sigma^2 - sigma_y^2 / s_i^2) z_i
    otherwise:            x_bar_i = sigma z_i
    x_{k_0} = sqrt(abar_{k_0}) V x_bar        (official code divides by sigma instead, a start larger by
                                               1 / sqrt(1 - abar_{k_0}): sqrt(1 - abar_{k_0}) = 0.99995
                                               at k_0 = 950 (T = 20), 0.9983 at k_0 = 750 (T = 4))

Step k -> k' (sigma = sigma_k, sigma' = sigma_{k'}):
    eps = eps_theta(x_k, k);  x0 = (x_k - sqrt(1 - abar_k) eps) / sqrt(abar_k)   (NOT clipped)
    x0_bar = V^T x0, eps_bar = V^T eps, fresh z_i ~ N(0, 1), and per index i:
      missing      (s_i = 0 or s_i sigma' = sigma_y):  x0_bar_i + sigma' sqrt(1 - eta^2) eps_bar_i + eta sigma' z_i
      less noisy   (0 < s_i sigma' < sigma_y):         x0_bar_i + sigma' sqrt(1 - eta^2)
                                                       * (y_bar_i - s_i x0_bar_i) / sigma_y
                                                       + eta sigma' z_i
      noisier      (s_i sigma' > sigma_y):             eta_b y_bar_i / s_i + (1 - eta_b) x0_bar_i
                                                       + sqrt(sigma'^2 - eta_b^2 sigma_y^2 / s_i^2) z_i
    x_{k'} = sqrt(abar_{k'}) V x_bar'.   Output x_{-1} (= the last x0 wherever no noise is left).

Noise convention (spec §0.1): DDRM's sigma_y is the std on [-1, 1] images, which is our unit, so
sigma_y = A.sigma_y directly. The official CLI value `--sigma_0` is on [0, 1] and doubled in the code
(`sigma_0 = 2 * args.sigma_0`): our A.sigma_y = 0.05 is `--sigma_0 0.025` there.

Variants (`variant`, YAML): "paper" (default) is the above, paper eqs. 7-8. "released" reproduces the
official code for singular values that the operator's threshold zeroed (DDRM's `singulars()` returns them
as 0 inside its m entries, and `singulars * sigma_next < sigma_0` is then true): they get the *less noisy*
update x0_bar_i + sigma' sqrt(1 - eta^2) y_bar_i / sigma_y + eta sigma' z_i instead of the missing one (spec
§4.3 correction). Which components: `zeroed_components` (the separable blur / SR SVDs' zeros below m; none
for masks and the identity, whose zeros are missing pixels in the code too). Gaussian deblur is the only
Table 1 task with such zeros (181,056 of 196,608 components at 256x256, 11,316 of 12,288 at 64x64, 2,829 of
3,072 at 32x32); on masks and SR (no zeroed value below m) the two variants give the same output. sigma_y = 0:
no component is less noisy in either variant. The start-scale difference above is not part of the variant.
Not reproduced (a plain bug, spec §4.3): the released `Deblurring` pairs singular values with the wrong
(channel-major) components, so its H(x) is not the blur.

Tasks: any linear operator with an SVD (`A.has_svd`); motion blur has none -> UnsupportedTask
(SPGD Table 1 shows "-"). Budget: T forward NFE, 0 backward.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from operators.base import SVD, Operator
from operators.separable import SeparableSVD
from solvers.base import RNG, Solver, SolverError

Tensor = torch.Tensor

#: `variant` values: the paper's update (default) or the released code's for thresholded singular values
VARIANTS = ("paper", "released")


def ddrm_timesteps(num_steps: int, num_train_steps: int = 1000) -> list[int]:
    """DDRM's grid, descending: (T-1)*skip, ..., skip, 0 with skip = 1000 // T (§4.2)."""
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"num_steps must be in [1, {num_train_steps}], got {num_steps}")
    skip = num_train_steps // num_steps
    return list(range(0, num_train_steps, skip))[::-1]


def initial_spectral_sample(y_bar: Tensor, s: Tensor, sigma: float, sigma_y: float, z: Tensor) -> Tensor:
    """x_bar at the first noise level: the measurement where it is less noisy than sigma, noise elsewhere."""
    observed = s * sigma > sigma_y
    s_safe = torch.where(observed, s, torch.ones_like(s))
    from_y = y_bar / s_safe + torch.sqrt((sigma**2 - sigma_y**2 / s_safe**2).clamp_min(0)) * z
    return torch.where(observed, from_y, sigma * z)


def zeroed_components(svd: SVD, s: Tensor) -> Tensor:
    """Bool mask (like s) of the components the released DDRM code treats as singular values equal to 0 rather
    than as missing: the zeros among the first m entries of a separable (blur / SR) SVD, whose threshold
    zeroed them (DDRM `singulars()` has m entries). Masks and the identity have none: their zeros are
    missing pixels in the code as well (DDRM `Inpainting.singulars()` lists the kept entries only)."""
    if not isinstance(svd, SeparableSVD):
        return torch.zeros_like(s, dtype=torch.bool)
    inside = torch.arange(s.shape[-1], device=s.device) < svd.m
    return inside & (s == 0)


def spectral_step(x0_bar: Tensor, eps_bar: Tensor, y_bar: Tensor, s: Tensor, sigma_next: float,
                  sigma_y: float, eta: float, eta_b: float, z: Tensor, zeroed: Tensor | None = None) -> Tensor:
    """x_bar' of the three cases of §4.3 (elementwise, per image). `zeroed` (bool, like s; variant
    "released"): components with s_i = 0 that take the less-noisy case, as in the official code."""
    product = s * sigma_next
    noisier = product > sigma_y
    less_noisy = ((s > 0) if zeroed is None else (s > 0) | zeroed) & (product < sigma_y)
    s_safe = torch.where(s > 0, s, torch.ones_like(s))
    carry = sigma_next * math.sqrt(1 - eta**2)
    missing_value = x0_bar + carry * eps_bar + eta * sigma_next * z
    less_noisy_value = (x0_bar + carry * (y_bar - s * x0_bar) / (sigma_y if sigma_y > 0 else 1.0)
                        + eta * sigma_next * z)
    noisier_value = (eta_b * y_bar / s_safe + (1 - eta_b) * x0_bar
                     + torch.sqrt((sigma_next**2 - eta_b**2 * sigma_y**2 / s_safe**2).clamp_min(0)) * z)
    return torch.where(noisier, noisier_value, torch.where(less_noisy, less_noisy_value, missing_value))


class DDRM(Solver):
    """DDRM, spectral-space sampler with eta / eta_b (module docstring)."""

    name = "ddrm"
    smoke: ClassVar[dict[str, Any]] = {"num_steps": 5}

    def supports(self, A: Operator) -> bool:
        return super().supports(A) and A.is_linear and A.has_svd

    def budget(self) -> dict[str, int]:
        return {"nfe_forward": len(ddrm_timesteps(int(self.num_steps))), "nfe_backward": 0}

    def _solve(self, y: Tensor, A: Operator, rng: RNG) -> Tensor:
        if self.variant not in VARIANTS:
            raise SolverError(f"ddrm: variant must be one of {', '.join(VARIANTS)} (paper: eqs. 7-8; released: the "
                              f"official code's update for thresholded singular values), got {self.variant!r}")
        sch = self.prior.schedule
        svd = A.svd
        s = svd.singulars(y.shape[0]).to(dtype=y.dtype, device=y.device)  # (B, n), zeros past the rank
        zeroed = zeroed_components(svd, s) if self.variant == "released" else None
        n = s.shape[1]
        y_bar = torch.nn.functional.pad(svd.Ut(y), (0, n - svd.m))  # U^T y, zero past m
        sigma_y = float(A.sigma_y)  # DDRM's sigma_y is in [-1, 1] units = ours (module docstring)

        ks = ddrm_timesteps(int(self.num_steps), sch.num_steps)
        abar = [float(sch.abar(k)) for k in ks] + [1.0]
        sigma = [math.sqrt((1 - a) / a) for a in abar]

        x_bar = initial_spectral_sample(y_bar, s, sigma[0], sigma_y, rng.randn((n,), like=s))
        x = math.sqrt(abar[0]) * svd.V(x_bar)
        for i, k in enumerate(ks):
            eps = self.prior.eps(x, k)
            x0 = self.prior.x0_from_eps(x, k, eps)  # unclipped (§4.1)
            x_bar = spectral_step(svd.Vt(x0), svd.Vt(eps), y_bar, s, sigma[i + 1], sigma_y,
                                  float(self.eta), float(self.eta_b), rng.randn((n,), like=s), zeroed)
            x = math.sqrt(abar[i + 1]) * svd.V(x_bar)
            self.check_finite(x, f"ddrm step k={k}")
        return x
