"""MCG — Manifold Constrained Gradient (Chung et al., NeurIPS 2022), as released.

Spec solvers-baselines.md §8.2 (`[MCG] HJ-harry/MCG_diffusion`, inpainting); SPGD paper App. D.1: MCG
"based on the source code" of the paper. On the DDPM grid of solvers/ddpm_steps.py (1000 steps), x_T ~ N(0, I);
per step k -> k' (gradients on x_k):

    x'     = ancestral step from x_k (x0_hat clipped inside the graph)
    g      = grad_{x_k} || A(A^+ y) - A(x0_hat) ||_2           (norm, not squared; through the network)
    y_k    = sqrt(abar_k) y + sqrt(1 - abar_k) z                (y noised to the current level k, as the code)
    x_k'   = P_{y_k}(x' - alpha g),  P_{y_k}(x) = x - A^+(A x - y_k)

Inpainting (A = A^+ = m): A(A^+ y) = m y, so the residual is the code's ||m (y - x0_hat)||, and
P(x' - alpha g) = (1 - m) x' - (1 - m) alpha g + m y_k is the code's update (the code restricts g to the
unobserved pixels; the projection does that here). For operators with full row rank (blurs, SR) A A^+ = I and
the residual is DPS's ||y - A x0_hat||. Motion blur: A^+ is the pseudo-inverse of the circular model A_c
(operators/blur.py), so y_range and the projection use A_c (ddpm_steps.pinv_model). Generalisation beyond inpainting (documented): the MCG code has no
deblurring or SR; we apply the same update with the operator's closed-form pseudo-inverse (spec §8.1), NOT the
DPS repo's `project` (wrong for masks and blurs, spec §8.2); operators without `A.pinv` raise UnsupportedTask.
alpha: the code's unnormalised scale 1 for inpainting (the paper's alpha = 1/||r|| is not what the code does,
spec §8.2 / [MCG-issue15]); other tasks: see solvers/configs/mcg.yaml.
A^+ in the projection is truncated at `projection_threshold` x the largest singular value
(ddpm_steps.projection_pinv): it copies A^+ of the measurement noise into the sample at every step (gain 1/s),
which with the operator's own pinv (DDRM's 3e-2 truncation) turned sigma_y = 0.05 into checkerboard noise on the
blurs (demo: 8 dB); masks and SR keep their exact pinv. Default 0.15 by measurement (solvers/configs/mcg.yaml).
y_range keeps the operator's own pinv (the gradient term is unchanged).
Deviation from the released code (documented, as in solvers/dps.py): the norm is taken PER IMAGE; the MCG code
takes one norm of the whole batch tensor (`th.norm((cond * mask) - (out["pred_xstart"] * mask))` in
guided_diffusion/gaussian_diffusion.py), so there image i's gradient is divided by the batch's residual norm
and depends on the other images. Identical at batch 1 (MCG's `run_inpainting.sh` setting); per image keeps a
result independent of the batch it runs in (generic solver contract).
Budget per image: num_steps forward + num_steps backward NFE. sigma_y does not enter the update.
"""
from __future__ import annotations

import torch

from operators.base import Operator
from solvers import ddpm_steps as dd
from solvers.base import RNG, Solver
from solvers.scoresde import PROJECTION_TASKS

Tensor = torch.Tensor


class MCG(Solver):
    name = "mcg"
    tasks = PROJECTION_TASKS
    smoke = {"num_steps": 20}

    def supports(self, A: Operator) -> bool:
        return super().supports(A) and dd.has_pinv(A)

    def budget(self) -> dict[str, int]:
        return dd.grid_budget(self.num_steps, backward=True)

    def _solve(self, y: Tensor, A: Operator, rng: RNG) -> Tensor:
        steps = dd.ddpm_grid(self.prior.schedule, self.num_steps)
        checks = dd.check_positions(len(steps))
        y_range = dd.pinv_model(A)(A.pinv(y))  # the part of y that A x can reach (m y for inpainting)
        pinv = dd.projection_pinv(A, self.projection_threshold)
        x = dd.start_noise(self.prior, y, rng)
        for i, step in enumerate(steps):
            x = x.detach().requires_grad_(True)
            pred = dd.predict(self.prior, x, step)
            g = dd.norm_gradient(dd.residual_norm(y_range, A, pred.x0), x)
            if self.observed:
                self.observe("likelihood_step", step=i, inner=0, k=step.k, x=x, grad=g,
                             prior_direction=dd.denoising_direction(x, pred, step))
            with torch.no_grad():
                x = pred.mean + dd.ancestral_noise(step, pred.v, pred.mean, rng) - self.alpha * g
                x = dd.project_onto_measurement(x, dd.noised_measurement(y, step.abar, rng), A, pinv)
            if i in checks:
                self.check_finite(x, f"MCG step k={step.k}")
        return x.detach()
