"""DPS — Diffusion Posterior Sampling (Chung et al., ICLR 2023), as released.

Spec solvers-baselines.md §3.1 (code `[DPS] condition_methods.py` class `ps`, `gaussian_diffusion.py`):
x_T ~ N(0, I); for each step k -> k' of the grid (1000 DDPM steps; solvers/ddpm_steps.py):

    (eps, v) = eps_theta(x_k, k);  x0_hat = clip(Tweedie(x_k, eps))          (clip inside the graph)
    x'_{k'}  = c_x0 x0_hat + c_xk x_k + s_k z                                  (ancestral step, learned range)
    g        = grad_{x_k} ||y - A(x0_hat)||_2                                   (norm, not squared; through the UNet)
    x_{k'}   = x'_{k'} - zeta g                                                 (also at the last step)

Output x_{-1} (clamped to [-1, 1] by `Solver.solve`). zeta per task: the code's `conditioning.params.scale`
(spec §3.3; the paper's zeta'/||r|| form equals code zeta = 2 zeta', spec §3.2 — we use the config values).
Deviation from the released code (documented): the norm is taken PER IMAGE; the code takes one norm of the
whole batch tensor, which couples images (spec §3.1 step 2; identical for batch 1, the code's own setting).
Budget per image: num_steps forward + num_steps backward NFE. sigma_y does not enter the update.
"""
from __future__ import annotations

import torch

from operators.base import Operator
from solvers import ddpm_steps as dd
from solvers.base import RNG, Solver

Tensor = torch.Tensor


def dps_step(prior, x: Tensor, step: dd.DDPMStep, y: Tensor, A: Operator,
             zeta: float) -> tuple[Tensor, dd.Prediction]:
    """One DPS step x_k -> x_{k'}: the unconditional mean minus zeta grad||y - A x0_hat||, before the noise.

    Returns (x' - zeta g) WITHOUT the ancestral noise, and the prediction (for callers that add their own
    noise, such as DPPS); `DPS` adds s_k z.
    """
    x = x.detach().requires_grad_(True)
    pred = dd.predict(prior, x, step)
    g = dd.norm_gradient(dd.residual_norm(y, A, pred.x0), x)
    return (pred.mean - zeta * g).detach(), pred


class DPS(Solver):
    name = "dps"
    smoke = {"num_steps": 20}

    def budget(self) -> dict[str, int]:
        return dd.grid_budget(self.num_steps, backward=True)

    def _solve(self, y: Tensor, A: Operator, rng: RNG) -> Tensor:
        steps = dd.ddpm_grid(self.prior.schedule, self.num_steps)
        checks = dd.check_positions(len(steps))
        x = dd.start_noise(self.prior, y, rng)
        for i, step in enumerate(steps):
            x_mean, pred = dps_step(self.prior, x, step, y, A, self.zeta)
            x = x_mean + dd.ancestral_noise(step, pred.v, x_mean, rng)
            if i in checks:
                self.check_finite(x, f"DPS step k={step.k}")
        return x
