"""SPGD: Stabilized Progressive Gradient Diffusion (Wu et al., ACM MM 2025, arXiv 2507.06656).

Spec: shared/spec/solvers-seed.md §2 (numbers and the paper-vs-code list §2.9); paper §4,
Eq. 10-13, App. D.2, Table 5. EDM (VE) variable x = x0 + sigma n; the denoiser D(x; sigma) is
`prior.denoise` (continuous VP conversion, spec §1).

Schedule (§2.1): sigma_i = (smax^(1/rho) + i/(T-1) (smin^(1/rho) - smax^(1/rho)))^rho, i < T,
sigma_T = 0; smax 100, smin 0.1, rho 7, T = 100. Start x = smax z, z ~ N(0, I) (§2.2).
Learning rate of outer step i (§2.3): eta_i = eta (1 - (i/T)(1 - r)).

Outer step i (§2.6), u_0 = x:
    for j = 0 .. N-1 (warm-up, Eq. 10):
        d_j = D(u_j; sigma_i)
        g_j = grad_u || A(D(u; sigma_i)) - y ||^2 at u_j      (per image; gradient through D)
        m_j = g_j if j = 0 else a_j beta m_{j-1} + (1 - a_j beta) g_j,
              a_j = (1 + cos(g_j, m_{j-1})) / 2                  (ADM, Eq. 12-13)
        u_{j+1} = u_j - eta_i m_j
    x = u_N + (1 - sigma_{i+1}/sigma_i) (D_i - u_{N-1})          (Euler / DDIM(eta=0) step, Eq. 11)
where D_i = d_{N-1} (re-used, as in the code) or, with `denoise_at_u_N`, D_i = D(u_N) and u_{N-1}
replaced by u_N (the literal reading of Eq. 11, one more forward NFE per outer step). At i = T-1
(sigma_T = 0) this gives x_hat = D_i - eta_{T-1} m_{N-1}.

The warm-up loop and ADM are the shared mechanism of solvers/gradient_management.py (also offered to DPS,
DPPS and DAPS as options `warmup_steps` / `adm`); SPGD's outputs are unchanged by the move (bit for bit).

Two variants (`variant`):
* `paper` (default): ADM applied (the m_j above), one global cosine per image over the flattened
  gradient, beta 0.95 (§2.5: App. D.2 value lost in extraction; Table 2 "full SPGD" SR row equals
  the beta = 0.95 row of Table 4). `lr_min_ratio` 0.01 (code; the paper is silent, but Table 5's
  rates equal the code's configs, which decay; a constant eta = 2.5 is unstable at small sigma, where
  D is nearly the identity on observed pixels and the inpainting step factor 1 - 2 eta < -1: on the
  exact Gaussian test it ends 6.1 posterior spreads from the posterior mean instead of 1.1).
  `adm: false` gives the "warm-up only" ablation (Table 2).
* `released`: the released code [SPGD] `sampler.py`: ADM is computed (channel-wise cosine averaged
  over pixels, beta 0.9) but never used, so u_{j+1} = u_j - eta_i g_j; lr decays to 1 %; the
  denoising step uses d_{N-1}. We do not compute the unused momentum: it cannot change the result,
  so `beta`, `adm`, `cosine`, `lr_min_ratio` and `denoise_at_u_N` are ignored (fixed to the code's values).

Noise: SPGD never reads the measurement noise (the loss has no 1/sigma_y^2 weight, §2.4), so no
conversion of A.sigma_y is needed.

Budget per image: T*N forward + T*N backward (T = 100, N = 5: 500 + 500, the paper's "500 NFEs"),
plus T forward when `denoise_at_u_N`.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from operators.base import Operator
from priors.schedule import edm_sigmas
from solvers import gradient_management as gm
from solvers.base import RNG, Solver, SolverError
from solvers.gradient_management import adm_cosine, adm_update  # noqa: F401  (re-exported: SPGD's ADM)

Tensor = torch.Tensor

#: what `variant: released` fixes (spec §2.5-§2.6: [SPGD] sampler.py class defaults)
RELEASED = {"apply_adm": False, "beta": 0.9, "cosine": "channel", "lr_min_ratio": 0.01,
            "denoise_at_u_N": False}


class SPGD(Solver):
    name = "spgd"
    smoke: ClassVar[dict[str, Any]] = {"num_steps": 6, "warmup_steps": 2}

    def _settings(self) -> dict[str, Any]:
        if self.variant == "released":
            return dict(RELEASED)
        if self.variant != "paper":
            raise SolverError(f"spgd: variant must be 'paper' or 'released', got {self.variant!r}")
        return {"apply_adm": bool(self.adm), "beta": float(self.beta), "cosine": self.cosine,
                "lr_min_ratio": float(self.lr_min_ratio), "denoise_at_u_N": bool(self.denoise_at_u_N)}

    def budget(self) -> dict[str, int]:
        T, N = int(self.num_steps), int(self.warmup_steps)
        extra = T if self._settings()["denoise_at_u_N"] else 0
        return {"nfe_forward": T * N + extra, "nfe_backward": T * N}

    def _likelihood_grad(self, u: Tensor, sigma: float, y: Tensor, A: Operator) -> tuple[Tensor, Tensor]:
        """(grad_u ||A(D(u; sigma)) - y||^2, D(u; sigma)), per image (the sum over the batch separates); the
        (gradient, aux) pair of the shared warm-up loop. One forward and one backward NFE."""
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            d = self.prior.denoise(u, sigma)
            loss = (A(d) - y).pow(2).sum()
            (g,) = torch.autograd.grad(loss, u)
        return g, d.detach()

    def _solve(self, y: Tensor, A: Operator, rng: RNG) -> Tensor:
        s = self._settings()
        T, N, eta = int(self.num_steps), int(self.warmup_steps), float(self.lr)
        if T < 1 or N < 1:
            raise SolverError(f"spgd: num_steps and warmup_steps must be >= 1, got {T}, {N}")
        sigmas = edm_sigmas(T, self.sigma_max, self.sigma_min, self.rho).tolist() + [0.0]
        x = sigmas[0] * rng.randn(self.prior.image_shape, like=y)
        management = gm.GradientManagement(warmup_steps=N, adm=s["apply_adm"], beta=s["beta"], cosine=s["cosine"])
        for i in range(T):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            eta_i = eta * (1 - i / T * (1 - s["lr_min_ratio"]))
            w = gm.warmup(self, x, lambda u: self._likelihood_grad(u, sigma, y, A), eta_i, N, management,
                          step=i, noise={"sigma": sigma},
                          check=lambda u, _j: self.check_finite(
                              u, f"spgd step {i} (sigma {sigma:.4g}); decrease lr (now {eta})"),
                          prior_direction=lambda u, d: d - u)
            u, u_prev, d = w.u, w.u_prev, w.aux
            if s["denoise_at_u_N"]:
                with torch.no_grad():
                    d, u_prev = self.prior.denoise(u, sigma), u
            x = u + (1 - sigma_next / sigma) * (d - u_prev)
        self.check_finite(x, "spgd output")
        return x
