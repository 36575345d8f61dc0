"""Score-SDE projection baseline (Song et al., ICLR 2022, "Solving inverse problems in medical imaging
with score-based generative models"), in the form the MCG repo runs it (`sample_method='vanilla'`).

Spec solvers-baselines.md §8.1 (`[MCG] guided_diffusion/gaussian_diffusion.py p_sample_loop_progressive`);
SPGD paper App. D.1: "projection configuration follows the recommendations in (Chung et al., 2022)".
On the DDPM grid of solvers/ddpm_steps.py (1000 steps), x_T ~ N(0, I); per step k -> k':

    x'     = unconditional ancestral step from x_k               (no guidance, no gradient)
    y_k    = sqrt(abar_k) y + sqrt(1 - abar_k) z                  (y noised to the CURRENT level k, as the code)
    x_k'   = x' - A^+(A x' - y_k)                                 (projection onto {x : A x = y_k})

For the inpainting mask A^+ = m and the projection is the code's (1 - m) x' + m y_k exactly. Generalisation
to the other linear operators (documented): the same projection with the operator's closed-form
pseudo-inverse `A.pinv` (spec §8.1 "general linear A"), NOT the DPS repo's `project` (wrong for masks and
blurs, spec §8.2); for motion blur A^+ and the residual A x' are those of the circular model
(operators/blur.py, ddpm_steps.pinv_model). Operators without a closed-form pinv (and nonlinear ones) raise
UnsupportedTask.

Truncated pseudo-inverse (`projection_threshold`, ours): the projection adds A^+ applied to the measurement
noise to the sample at every step, amplified by 1/s on a singular value s. With the operator's own `pinv`
(DDRM's 3e-2 truncation; on the 1-D factors for the separable Gaussian blur, so 2-D values down to 1e-3)
sigma_y = 0.05 becomes checkerboard noise (demo: 8.1 dB on Gaussian deblur, 8.7 dB on motion deblur, where
SPGD Table 1 reports 24.32 dB for Score-SDE on FFHQ Gaussian deblur, so the baseline as run there did not blow
up). A^+ here inverts only the singular values >= projection_threshold x the largest one
(ddpm_steps.projection_pinv, the same for MCG); the rest of the spectrum is left to the prior. Masks and SR
keep their exact pinv. Default 0.15 by measurement on the demo (solvers/configs/scoresde.yaml).
Budget per image: num_steps forward NFE, no backward pass. sigma_y does not enter the update.
"""
from __future__ import annotations

import torch

from operators.base import Operator
from solvers import ddpm_steps as dd
from solvers.base import RNG, Solver

Tensor = torch.Tensor

PROJECTION_TASKS = ("inpaint_random", "inpaint_box", "deblur_gaussian", "deblur_motion", "sr4")


class ScoreSDE(Solver):
    name = "scoresde"
    tasks = PROJECTION_TASKS
    smoke = {"num_steps": 20}

    def supports(self, A: Operator) -> bool:
        return super().supports(A) and dd.has_pinv(A)

    def budget(self) -> dict[str, int]:
        return dd.grid_budget(self.num_steps, backward=False)

    def _solve(self, y: Tensor, A: Operator, rng: RNG) -> Tensor:
        steps = dd.ddpm_grid(self.prior.schedule, self.num_steps)
        checks = dd.check_positions(len(steps))
        pinv = dd.projection_pinv(A, self.projection_threshold)
        x = dd.start_noise(self.prior, y, rng)
        with torch.no_grad():
            for i, step in enumerate(steps):
                pred = dd.predict(self.prior, x, step)
                x = pred.mean + dd.ancestral_noise(step, pred.v, x, rng)
                x = dd.project_onto_measurement(x, dd.noised_measurement(y, step.abar, rng), A, pinv)
                if i in checks:
                    self.check_finite(x, f"Score-SDE step k={step.k}")
        return x
