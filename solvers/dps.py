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

Gradient management (options, default off; issue 13): `warmup_steps` N and `adm` run SPGD's warm-up and
adaptive directional momentum (solvers/gradient_management.py, the same loop SPGD runs; SPGD paper §4.1-§4.2,
Eq. 10-13, presented as plug-and-play for posterior samplers, README "Plug-and-Play Compatibility"). Per step
k -> k', u_0 = x_k:

    for j = 0 .. N-1:  (pred_j, g_j) at u_j as above;  m_j = g_j or ADM(m_{j-1}, g_j);  u_{j+1} = u_j - zeta m_j
    x_{k'} = mean(u_{N-1}) - zeta m_{N-1} + s_k z        (= u_N + (mean(u_{N-1}) - u_{N-1}) + s_k z)

i.e. the denoising step re-uses the last prediction, as SPGD's code does. N = 1 without ADM is exactly the
step above (bit for bit). Each inner step uses the full zeta (SPGD's per-step rate plays that role; lower
zeta by hand for smaller warm-up steps). Momentum restarts at every k. Budget: N (num_steps forward +
num_steps backward) NFE.
"""
from __future__ import annotations

import torch

from operators.base import Operator
from solvers import ddpm_steps as dd
from solvers import gradient_management as gm
from solvers.base import RNG, Solver

Tensor = torch.Tensor

PLAIN = gm.GradientManagement()  # N = 1, no ADM: the DPS step as released


def dps_step(prior, x: Tensor, step: dd.DDPMStep, y: Tensor, A: Operator, zeta: float,
             management: gm.GradientManagement = PLAIN, solver: Solver | None = None,
             index: int = 0) -> tuple[Tensor, dd.Prediction]:
    """One DPS step x_k -> x_{k'}: the unconditional mean minus zeta grad||y - A x0_hat||, before the noise.

    Returns (x' - zeta g) WITHOUT the ancestral noise, and the prediction (for callers that add their own
    noise, such as DPPS); `DPS` adds s_k z. With `management` (warm-up / ADM) the gradient steps run in the
    shared loop of solvers/gradient_management.py and the prediction is that of u_{N-1} (module docstring).
    `solver` receives the observer events ("likelihood_step", step `index`, noise index k).
    """
    def evaluate(u: Tensor) -> tuple[Tensor, dd.Prediction]:
        u = u.detach().requires_grad_(True)
        pred = dd.predict(prior, u, step)
        return dd.norm_gradient(dd.residual_norm(y, A, pred.x0), u), pred

    w = gm.warmup(solver, x, evaluate, zeta, management.warmup_steps, management, step=index,
                  noise={"k": step.k}, prior_direction=lambda u, pred: dd.denoising_direction(u, pred, step))
    pred = w.aux
    return (pred.mean - zeta * w.managed).detach(), pred


def dps_budget(num_steps: int, management: gm.GradientManagement) -> dict[str, int]:
    """Per-image NFE of DPS / DPPS: one forward and one backward per grid step and warm-up step."""
    base = dd.grid_budget(num_steps, backward=True)
    return {k: v * int(management.warmup_steps) for k, v in base.items()}


class DPS(Solver):
    name = "dps"
    smoke = {"num_steps": 20}

    def budget(self) -> dict[str, int]:
        return dps_budget(self.num_steps, gm.GradientManagement.from_params(self.params))

    def _solve(self, y: Tensor, A: Operator, rng: RNG) -> Tensor:
        management = gm.GradientManagement.from_params(self.params)
        steps = dd.ddpm_grid(self.prior.schedule, self.num_steps)
        checks = dd.check_positions(len(steps))
        x = dd.start_noise(self.prior, y, rng)
        for i, step in enumerate(steps):
            x_mean, pred = dps_step(self.prior, x, step, y, A, self.zeta, management, self, i)
            x = x_mean + dd.ancestral_noise(step, pred.v, x_mean, rng)
            if i in checks:
                self.check_finite(x, f"DPS step k={step.k}")
        return x
