"""DiffPIR — Denoising Diffusion Models for Plug-and-Play Image Restoration (Zhu et al., CVPRW 2023).

Source: spec solvers-baselines.md §5 (= `[DiffPIR]` yuanzhi-zhu/DiffPIR `main_ddpir*.py`, configs;
generate_mode DiffPIR, model_output_type pred_xstart, iter_num_U 1, guidance_scale 1).
SPGD Table 1: 20 steps (`[SPGD-paper D.1]`).

Quantities (§5.1):
    sigma_k = sqrt((1 - abar_k) / abar_k),   rho_k = lambda sigma_n^2 / sigma_k^2,
    sigma_n = max(0.001, DiffPIR's noise std on [0, 1]) = max(0.001, A.sigma_y / 2)   (the one conversion,
              `diffpir_noise_level`; spec §0.1: the official noise_level_img is a [0, 1] std),
    steps ("quad" skip from t_start = 999): s_j = floor(sqrt(linspace(0, 1000^2, N))_j), s_{N-1} -= 1,
              k_j = 999 - s_j   (N = 20: 999, 770, 675, ..., 54, 26, 0).

Initial state: x = sqrt(abar_999) b + sqrt(1 - abar_999) z with b = the clipped pseudo-inverse A^+ y
(`main_ddpir.py` uses y / m*y / upsampled y, all ~ A^+ y; the weight sqrt(abar_999) = 0.0064 makes x
essentially pure noise either way). Operators without a pseudo-inverse use A^T y.

Iteration j = 0 .. N-1, k = k_j, k' = k_{j+1} (§5.2):
    1. x0 = clip_[-1,1]((x - sqrt(1 - abar_k) eps_theta(x, k)) / sqrt(abar_k))            one NFE
    2. (j < N-1) x0 = argmin_v ||y - A v||^2 + rho_k ||v - x0||^2 = A.prox(x0, y, rho_k)
       (the minimiser is the same on [-1, 1] and on the official [0, 1] scale: both terms scale by 1/4).
       Exact prox of the operator being solved (`prox_method` per task): closed form for masks and SR (SVD),
       "svd" (Gaussian) / "cg" (motion; tol 1e-3, <= 30 iterations as scico's PnP x-step)
       for the DPS reflect-padded blurs. The official FFT formula (§5.3) is the exact prox of
       DiffPIR's own *circular* blur; on a reflect-padded measurement it is only approximate near the
       borders (its whole support at 32x32), so it is available as `prox_method: fft` but not the default.
    3. (j < N-1) eps_hat = (x - sqrt(abar_k) x0) / sqrt(1 - abar_k),
       x = sqrt(abar_k') x0 + sqrt(1 - zeta) (sqrt(1 - abar_k' - s_eta^2) eps_hat + s_eta z1)
           + sqrt(zeta) sqrt(1 - abar_k') z2,   s_eta = eta sqrt((1 - abar_k') / (1 - abar_k)) sqrt(beta_k)
       (eta = 0 by default, as in every official config: then z1 is not drawn).
Output (`output: state`, the official behaviour §5.2 step 4): the state x after the loop (index 0, noise std
0.01); the last denoiser call is then unused. `output: x0` returns that call's x0 instead.

Schedule in float64 (the official code uses float32). Budget: N forward NFE, 0 backward.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from operators.base import Operator
from solvers.base import RNG, Solver, SolverError, initial_estimate
from solvers.pnp_admm import data_prox

Tensor = torch.Tensor


def quad_timesteps(num_steps: int, num_train_steps: int = 1000) -> list[int]:
    """DiffPIR's `skip_type: quad` sequence of model indices, descending from 999 to 0 (§5.1)."""
    if num_steps < 2:
        raise ValueError(f"DiffPIR needs at least 2 steps, got {num_steps}")
    seq = torch.sqrt(torch.linspace(0, num_train_steps**2, num_steps, dtype=torch.float64))
    s = [int(v) for v in seq.tolist()]
    s[-1] -= 1
    return [num_train_steps - 1 - v for v in s]


def diffpir_noise_level(sigma_y: float) -> float:
    """DiffPIR's sigma_n: the measurement std on [0, 1] images, floored at 0.001 (§5.1, §0.1)."""
    return max(0.001, sigma_y / 2)


class DiffPIR(Solver):
    """DiffPIR with the operator's exact proximal data step (module docstring)."""

    name = "diffpir"
    smoke: ClassVar[dict[str, Any]] = {"num_steps": 5}

    def supports(self, A: Operator) -> bool:
        return super().supports(A) and A.is_linear

    def budget(self) -> dict[str, int]:
        return {"nfe_forward": int(self.num_steps), "nfe_backward": 0}

    def _solve(self, y: Tensor, A: Operator, rng: RNG) -> Tensor:
        if self.output not in ("state", "x0"):
            raise SolverError(f"diffpir: output must be 'state' or 'x0', got {self.output!r}")
        sch = self.prior.schedule
        ks = quad_timesteps(int(self.num_steps), sch.num_steps)
        abar = [float(sch.abar(k)) for k in ks]
        sigma_n = diffpir_noise_level(float(A.sigma_y))
        lam, zeta, eta = float(self.lam), float(self.zeta), float(self.eta)

        x = math.sqrt(abar[0]) * initial_estimate(y, A, self.prior.image_shape).clamp(-1, 1) + math.sqrt(1 - abar[0]) * rng.randn(
            self.prior.image_shape, like=y)
        x0 = x
        for j, k in enumerate(ks):
            x0 = self.prior.x0(x, k, clip=True)
            if j == len(ks) - 1:
                break
            rho = lam * sigma_n**2 * abar[j] / (1 - abar[j])  # lambda sigma_n^2 / sigma_k^2
            x0 = data_prox(A, x0, y, rho, self.prox_method, float(self.cg_tol), int(self.cg_max_iter))
            a, a_next = abar[j], abar[j + 1]
            eps_hat = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
            s_eta = eta * math.sqrt((1 - a_next) / (1 - a) * float(sch.betas[k]))
            noise = math.sqrt(1 - a_next - s_eta**2) * eps_hat
            if s_eta > 0:
                noise = noise + s_eta * rng.randn_like(x)
            x = (math.sqrt(a_next) * x0 + math.sqrt(1 - zeta) * noise
                 + math.sqrt(zeta) * math.sqrt(1 - a_next) * rng.randn_like(x))
            self.check_finite(x, f"diffpir step k={k}")
        return x if self.output == "state" else x0
