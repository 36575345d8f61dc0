"""PnP-ADMM (Venkatakrishnan et al. 2013; Chan, Wang, Elgendy, IEEE TCI 2016) as the DPS/SPGD baseline.

Source: spec solvers-baselines.md §7 — `[SPGD-paper D.1]`: pre-trained DnCNN, 10 iterations on all
tasks; the packaged recipe with exactly these pieces is `[scico]` examples/scripts/deconv_ppp_dncnn_admm.py
(rho 0.2, maxiter 10, DnCNN "17M", x0 = A^T y, x-step by CG). Scaled-dual ADMM on f(x) + g(x),
f = 1/2 ||y - A x||^2, g implicit through a Gaussian denoiser D:

    x^0 = A^T y,  z^0 = x^0,  u^0 = 0;   for t = 0 .. T-1:
      x^{t+1} = argmin_x ||y - A x||^2 + rho ||x - (z^t - u^t)||^2   = A.prox(z^t - u^t, y, rho)
                (closed form for masks / SR / Gaussian blur (SVD); CG for motion blur as scico does:
                 tol 1e-3, <= 30 iterations; `prox_method` per task, see `data_prox`)
      z^{t+1} = D(x^{t+1} + u^t)
      u^{t+1} = u^t + x^{t+1} - z^{t+1}
    output x^T (scico returns the x iterate).

Units: the iteration runs on [-1, 1] images. The x-step minimiser is the same as on scico's [0, 1] scale
(both terms scale by 1/4), and the denoiser is applied in its own unit, D(v) = 2 D01((v + 1) / 2) - 1.

Denoisers (`denoiser`):
  * `dncnn` (default): our port of SCICO's grey-scale DnCNN (solvers/pnp_denoisers.py), applied per colour
    channel, fixed strength (variant `dncnn_variant`, default 17M: the recipe's; the prox step size 1/rho
    is ignored, as in the recipe). A sigma-input variant (17N/6N) gets `dncnn_sigma` (on [0, 1]).
    No diffusion-prior NFE: budget 0 / 0.
  * `prior`: the diffusion prior's one-step MMSE denoiser prior.denoise(v, sigma) (EDM view, one counted NFE
    per iteration: budget T / 0) at the matched level sigma = sigma_y / sqrt(rho) (Chan et al. 2016: denoiser
    strength sqrt(lambda / rho) with lambda = sigma_y^2 for the data term above, so that for an exact MMSE
    denoiser of a Gaussian prior the fixed point is the exact posterior mean), floored at `prior_sigma_min`;
    `prior_sigma` overrides it with a fixed value ([-1, 1] units).
Budget: see `budget()`; no backward passes.
"""
from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import torch

from operators.base import Operator
from solvers.base import RNG, Solver, SolverError
from solvers.pnp_denoisers import WeightsError, cached_dncnn, dncnn_weights

Tensor = torch.Tensor


def data_prox(A: Operator, z: Tensor, y: Tensor, rho: float, method: str | None = None,
              cg_tol: float = 1e-3, cg_max_iter: int = 30) -> Tensor:
    """argmin_x ||y - A x||^2 + rho ||x - z||^2 by the operator's prox (method None: the operator's default;
    "svd" / "cg" for the exact prox of the reflect-padded blurs, "fft" for their circular approximation).
    CG (the operator picks the warm start, the circular FFT solution for the blurs) runs on the whole batch
    with per-image step sizes and stopping (operators/linalg.py), at relative residual cg_tol or after
    cg_max_iter iterations. At DiffPIR's early rho (~1e-7) the system is so ill-conditioned that CG would
    amplify any batch-size-dependent rounding to ~1e-2, so the blur operators make every image's FFTs and
    OTF bit-identical whatever the batch (operators/blur.py `rfft2`, `_otf`)."""
    if method is None:
        return A.prox(z, y, rho)
    if method == "cg":
        return A.prox(z, y, rho, method="cg", tol=cg_tol, max_iter=cg_max_iter)
    return A.prox(z, y, rho, method=method)


class PnPADMM(Solver):
    """Plug-and-play ADMM with a DnCNN or the prior's own denoiser (module docstring)."""

    name = "pnp_admm"
    smoke: ClassVar[dict[str, Any]] = {"iterations": 3}

    def supports(self, A: Operator) -> bool:
        return super().supports(A) and A.is_linear

    def budget(self) -> dict[str, int]:
        calls = int(self.iterations) if self.denoiser == "prior" else 0
        return {"nfe_forward": calls, "nfe_backward": 0}

    def denoiser_sigma(self, A: Operator) -> float:
        """Noise std ([-1, 1] units) of the prior denoiser: fixed, or matched sigma_y / sqrt(rho)."""
        if self.prior_sigma is not None:
            return float(self.prior_sigma)
        return max(float(A.sigma_y) / math.sqrt(float(self.rho)), float(self.prior_sigma_min))

    def _denoiser(self, A: Operator) -> Callable[[Tensor], Tensor]:
        if self.denoiser == "prior":
            sigma = self.denoiser_sigma(A)
            return lambda v: self.prior.denoise(v, sigma)
        if self.denoiser == "dncnn":
            variant = str(self.dncnn_variant)
            nets: dict[torch.device, Any] = {}

            def dncnn(v: Tensor) -> Tensor:  # built once per process and device (solvers/pnp_denoisers.py cache)
                if v.device not in nets:
                    nets[v.device] = cached_dncnn(variant, v.device)
                net = nets[v.device]
                return net.denoise_image(v, float(self.dncnn_sigma) if net.sigma_input else None)
            return dncnn
        raise SolverError(f"pnp_admm: denoiser must be 'dncnn' or 'prior', got {self.denoiser!r}")

    def external_models(self) -> dict[str, str]:
        """The DnCNN (not the protocol's prior) when `denoiser` is 'dncnn'; {} with the prior's own denoiser."""
        if self.denoiser != "dncnn":
            return {}
        variant = str(self.dncnn_variant)
        try:
            path, digest = dncnn_weights(variant)
        except WeightsError as err:  # the solve will fail with the same message; the config still names the model
            return {"denoiser": f"DnCNN {variant} (SCICO BSD-trained weights, not available: {err})"}
        return {"denoiser": f"DnCNN {variant} (SCICO BSD-trained weights, file {path.name}, sha256 {digest[:12]})"}

    def _solve(self, y: Tensor, A: Operator, rng: RNG) -> Tensor:
        denoise = self._denoiser(A)
        rho = float(self.rho)
        x = A.adjoint(y)
        z = x
        u = torch.zeros_like(x)
        for t in range(int(self.iterations)):
            x = data_prox(A, z - u, y, rho, self.prox_method, float(self.cg_tol), int(self.cg_max_iter))
            z = denoise(x + u)
            u = u + x - z
            self.check_finite(x, f"pnp_admm iteration {t}")
        return x
