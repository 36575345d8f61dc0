"""DPPS — Diffusion Posterior Proximal Sampling (Wu et al., ACM MM 2024), as released.

Spec solvers-seed.md §4 (official code `74587887/DPPS_code` @ 5abdfe6, built on DPS; only the abstract of
the paper was available). On the DDPM grid of solvers/ddpm_steps.py (1000 steps):

  init (aligned):  x_T = sqrt(abar_T) y~ + sqrt(1 - abar_T) eps,  y~ = y if y is image-sized, else the
                   nearest-neighbour upsampling of y to the image size (SR; spec §4.2)
  per step k -> k':
    x'     = mean(x_k) - zeta grad_{x_k} ||y - A(x0_hat)||_2              (the DPS step, solvers/dps.py)
    n_k    = floor(max(50 (1 - exp(-SNR_k)), 2)),  SNR_k = abar_k / (1 - abar_k)
    c_q    = x' + s_k z_q,  q = 1..n_k                                   (z_q from the image's own stream)
    delta_q = || sqrt(abar_k') y - A(c_q - sqrt(1 - abar_k') eps_hat(x_k)) ||_2
    x_k'   = c_{argmin delta}; at the last step x_{-1} = x' (no noise, hence no selection)

The released code assumes batch 1; here every image selects among its own candidates (the B * n_k candidates
are evaluated in one batched call of A.repeat_interleave(n_k), built on the device once per value of n_k). n_max = 50 and the SNR rule are the code's constants.
At the last step the code also forms candidates, but with s_0 z masked to 0 they are all equal to x', so we
skip them (same output, fewer A calls). Budget per image: num_steps forward + num_steps backward NFE
(candidate selection costs only operator evaluations). sigma_y does not enter the update.
Options `warmup_steps` / `adm` (default off = as released): SPGD's gradient management on the DPS step
(solvers/dps.py docstring, solvers/gradient_management.py); the candidates then use eps_hat of u_{N-1} and
the budget is N times the above.
"""
from __future__ import annotations

import math

import torch

from operators.base import Operator
from solvers import ddpm_steps as dd
from solvers import gradient_management as gm
from solvers.base import RNG, Solver, UnsupportedTask
from solvers.dps import dps_budget, dps_step

Tensor = torch.Tensor


def candidate_count(step: dd.DDPMStep, n_max: int) -> int:
    """n_k = floor(max(n_max (1 - exp(-SNR_k)), 2))."""
    return math.floor(max(n_max * (1.0 - math.exp(-step.snr)), 2))


def aligned_start(prior, y: Tensor, abar_T: float, rng: RNG) -> Tensor:
    """x_T = sqrt(abar_T) y~ + sqrt(1 - abar_T) eps (spec seed §4.2)."""
    shape = tuple(prior.image_shape)
    if tuple(y.shape[1:]) == shape:
        y_img = y
    else:
        C, H, W = shape
        h, w = y.shape[-2:]
        if y.ndim != 4 or y.shape[1] != C or H % h or W % w or H // h != W // w:
            raise UnsupportedTask(
                f"DPPS aligned initialisation needs y of the image shape {shape} or an integer downscale "
                f"of it, got y of shape {tuple(y.shape[1:])}")
        y_img = torch.nn.functional.interpolate(y, scale_factor=H // h, mode="nearest")
    return math.sqrt(abar_T) * y_img + math.sqrt(1.0 - abar_T) * rng.randn_like(y_img)


def select_candidate(x_mean: Tensor, std: Tensor, eps: Tensor, y: Tensor, A: Operator,
                     step: dd.DDPMStep, n: int, rng: RNG, A_rep: Operator | None = None) -> Tensor:
    """Per image: draw n candidates x' + s z_q and keep the one closest to the noised measurement.

    A_rep: the candidates' operator `A.repeat_interleave(n)` (built here when None; the solve loop keeps
    it while n stays the same). Everything stays on the device (the choice is a gather, not an index)."""
    B = x_mean.shape[0]
    rep = lambda t: t.repeat_interleave(n, dim=0)  # noqa: E731  image i's n copies are adjacent
    cand = rep(x_mean) + rep(std) * rng.repeat(n).randn_like(rep(x_mean))
    A_rep = A.repeat_interleave(n) if A_rep is None else A_rep
    clean = cand - math.sqrt(1.0 - step.abar_prev) * rep(eps)
    delta = torch.linalg.vector_norm((math.sqrt(step.abar_prev) * rep(y) - A_rep(clean)).flatten(1), dim=1)
    best = delta.view(B, n).argmin(dim=1)
    chosen = torch.take_along_dim(cand.view(B, n, -1), best.view(B, 1, 1), dim=1)
    return chosen.view(x_mean.shape)


class DPPS(Solver):
    name = "dpps"
    tasks = ("inpaint_random", "inpaint_box", "deblur_gaussian", "deblur_motion", "sr4")
    smoke = {"num_steps": 20}

    def budget(self) -> dict[str, int]:
        return dps_budget(self.num_steps, gm.GradientManagement.from_params(self.params))

    def _solve(self, y: Tensor, A: Operator, rng: RNG) -> Tensor:
        management = gm.GradientManagement.from_params(self.params)
        steps = dd.ddpm_grid(self.prior.schedule, self.num_steps)
        checks = dd.check_positions(len(steps))
        x = aligned_start(self.prior, y, steps[0].abar, rng) if self.aligned_init else \
            dd.start_noise(self.prior, y, rng)
        A_rep, n_rep = None, 0  # the candidates' operator, rebuilt (on the device) only when n_k changes
        for i, step in enumerate(steps):
            x_mean, pred = dps_step(self.prior, x, step, y, A, self.zeta, management, self, i)
            if step.last:
                x = x_mean
            else:
                std = dd.step_std(step, pred.v, x_mean)
                n = candidate_count(step, self.max_candidates)
                if n != n_rep:
                    A_rep, n_rep = A.repeat_interleave(n), n
                with torch.no_grad():
                    x = select_candidate(x_mean, std, pred.eps.detach(), y, A, step, n, rng, A_rep)
            if i in checks:
                self.check_finite(x, f"DPPS step k={step.k}")
        return x
