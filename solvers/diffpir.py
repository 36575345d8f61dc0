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

Initial state (`init`, YAML; `released_start`):
  * "pinv" (default): x = sqrt(abar_999) b + sqrt(1 - abar_999) z with b = the clipped pseudo-inverse A^+ y
    (operators without a pseudo-inverse: A^T y).
  * "released": the official standalone scripts' start (spec §5.1):
      inpainting, deblurring (y has the image shape): b = y with the holes at -1 (the script masks the [0, 1]
      image after adding the noise), started from y's own noise level t_y = argmin_k |sigma_k - sigma_y|
      (11 for sigma_y = 0.05, 0 for sigma_y = 0; `main_ddpir_inpainting.py`, `main_ddpir_deblur.py`):
          x = c b + sqrt((1 - abar_999) - c^2 (1 - abar_{t_y})) z,   c = sqrt(abar_999 / abar_{t_y});
      SR (y is the image downsampled by an integer factor): b = bicubic-upsampled y (Keys a = -0.75, the
      kernel of OpenCV INTER_CUBIC in `main_ddpir_sisr.py`; torch replicates the edges),
          x = sqrt(abar_999) b + sqrt(1 - abar_999) z.
  The start weight sqrt(abar_999) = 0.0064 is small, but the output does depend on b: the release check
  (issue 13) measured max |difference| 0.077 on the 20-step Gaussian-deblur output between the two starts
  (ADM network). With the exact Gaussian prior (64x64, 4 prior samples, sigma_y 0.05, 20 steps) it is 0.0011
  (Gaussian deblur), 0.0002 (random inpainting), 3e-5 (SR x4): the Gaussian chain forgets its start faster.

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
from operators.inpainting import MaskOperator
from priors.schedule import VPSchedule
from solvers.base import RNG, Solver, SolverError, initial_estimate
from solvers.pnp_admm import data_prox

Tensor = torch.Tensor

#: `init` values: the clipped pseudo-inverse (default) or the official scripts' start images
INITS = ("pinv", "released")


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


def noise_level_index(schedule: VPSchedule, sigma_y: float) -> int:
    """t_y = argmin_k |sigma_k - sigma_y|, sigma_k = sqrt((1 - abar_k) / abar_k): the index whose noise level is
    y's own ([-1, 1] std; the official `find_nearest(reduced_alpha_cumprod, 2 * noise_level_img)`)."""
    abar = schedule.abar(torch.arange(schedule.num_steps, dtype=torch.float64))
    return int(torch.argmin(((1 - abar) / abar).sqrt().sub(sigma_y).abs()))


def released_start(y: Tensor, A: Operator, image_shape: tuple[int, ...], schedule: VPSchedule, k_start: int,
                   z: Tensor) -> Tensor:
    """The official scripts' x at k_start (module docstring, init "released"): y at its own noise level
    (holes at -1) when y has the image shape, bicubic-upsampled y at k_start when y is downsampled."""
    ab = float(schedule.abar(k_start))
    shape = tuple(image_shape)
    if tuple(y.shape[1:]) == shape:
        base = y
        if isinstance(A, MaskOperator):
            base = torch.where(A.param("mask", y) > 0, y, -torch.ones_like(y))
        ab_y = float(schedule.abar(noise_level_index(schedule, float(A.sigma_y))))
        c = math.sqrt(ab / ab_y)
        return c * base + math.sqrt(max((1 - ab) - c**2 * (1 - ab_y), 0.0)) * z
    down = y.dim() == 4 and y.shape[1] == shape[0] and all(
        s % t == 0 and s // t > 1 for s, t in zip(shape[1:], y.shape[2:]))
    if not down:
        raise SolverError(f"diffpir: init 'released' is defined for inpainting, deblurring and super-resolution "
                          f"(y of the image shape or downsampled), not for task {A.name!r}; use init: pinv")
    base = torch.nn.functional.interpolate(y, size=shape[1:], mode="bicubic", align_corners=False)
    return math.sqrt(ab) * base + math.sqrt(1 - ab) * z


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
        if self.init not in INITS:
            raise SolverError(f"diffpir: init must be one of {', '.join(INITS)} (pinv: clipped A^+ y; released: the "
                              f"official scripts' start images), got {self.init!r}")
        sch = self.prior.schedule
        ks = quad_timesteps(int(self.num_steps), sch.num_steps)
        abar = [float(sch.abar(k)) for k in ks]
        sigma_n = diffpir_noise_level(float(A.sigma_y))
        lam, zeta, eta = float(self.lam), float(self.zeta), float(self.eta)

        z = rng.randn(self.prior.image_shape, like=y)
        if self.init == "released":
            x = released_start(y, A, self.prior.image_shape, sch, ks[0], z)
        else:
            base = initial_estimate(y, A, self.prior.image_shape).clamp(-1, 1)
            x = math.sqrt(abar[0]) * base + math.sqrt(1 - abar[0]) * z
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
