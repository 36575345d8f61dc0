"""PiGDM — pseudoinverse-guided diffusion (Song, Vahdat, Mardani, Kautz; ICLR 2023).

Source: spec solvers-more.md §2 (paper form §2.1; reference code = NVlabs/RED-diff `algos/pgdm.py`, §2.2; there
is no standalone official repository). Notation: abar_{-1} = 1; step k -> s on the grid below; eps, x0_hat =
eps_theta(x_k, k) and its Tweedie estimate (NOT clipped); J = d x0_hat / d x_k, so J^T w is one vector-Jacobian
product through the network (one backward NFE).

Grid (RED-diff `utils/functions.py`, §2.2): skip = 1000 // N, k in (..., 2 skip, skip, 0) descending (990 -> 0
for N = 100), then s = -1. Start (§2.2, every variant): x = sqrt(abar_{k0}) A^+ y + sqrt(1 - abar_{k0}) z.

Step k -> s (DDIM with eta, standard coefficients):
    c1 = eta sqrt((1 - abar_k / abar_s)(1 - abar_s) / (1 - abar_k)),  c2 = sqrt(1 - abar_s - c1^2)
    g  = J^T w                                            (w computed from x0_hat and held constant)
    x_s = sqrt(abar_s) x0_hat + c1 z + c2 eps + c_g g
The last step (s = -1) has c1 = c2 = 0: the output is x0_hat(x_0) + c_g g, one final guidance step (unclipped
until `Solver.solve`'s clamp).

Variants (`variant`), lambda = `guidance_weight`, r_k^2 = 1 - abar_k (= sigma_k^2 / (1 + sigma_k^2) in VE terms,
the paper's adaptive weight, §2.1), sigma_y = A.sigma_y ([-1, 1] units, the std actually added):
* "paper" (default): the paper's noisy-measurement guidance, p(y | x_k) ~ N(A x0_hat, r_k^2 A A^T + sigma_y^2 I),
  in the reference step:
      w   = r_k^2 A^T (r_k^2 A A^T + sigma_y^2 I)^{-1} (y - A x0_hat) = V diag(r_k^2 s_i / (r_k^2 s_i^2 + sigma_y^2)) U^T (...)
      c_g = lambda sqrt(abar_s) sqrt(abar_k)
  i.e. r_k^2 times the paper's likelihood score (the factor that makes it A^+ (y - A x0_hat) at sigma_y = 0, where
  it equals "released" except for the inpainting paste), the same form InverseBench uses (spec §2.2 `[IB]`) and
  the only one of the three that is stable on the 64x64 demo: sigma_y acts as a per-singular-value Tikhonov
  term sigma_y^2 / r_k^2, so noise is not amplified by 1 / s_i late in sampling. Needs the operator's SVD
  (`A.svd`; singular values below the operator's threshold count as zero).
* "tweedie": the spec's reading of the paper (§2.2 `[derived]`): the DDIM step driven by the guided score,
      w   = A^T (r_k^2 A A^T + sigma_y^2 I)^{-1} (y - A x0_hat)
      c_g = lambda (sqrt(abar_s) - c2 sqrt(abar_k / (1 - abar_k))) (1 - abar_k) / sqrt(abar_k)
  (x0_hat -> x0_hat + sigma_k^2 J_VE^T w, the conditional Tweedie estimate, AND eps -> the eps of that estimate;
  at eta = 1 the guidance enters with the DDPM weight beta' sqrt(abar_s / abar_k)). Exact where the PiGDM
  Gaussian approximation is (white unit-variance prior): it converges to the exact posterior as N grows
  (tests/test_solver_pigdm.py). But r_k^2 = 1 - abar_k underestimates Var[x0 | x_k] by up to a factor abar_k in
  high-variance directions, and the explicit step then diverges there: on the embedded Gaussian prior at 64x64
  (SR x4, 100 steps) it blows up near k = 750. Kept as an option, not the default. (Keeping the network eps
  with this weight, RED-diff's `awd=True` structure, already diverged at 32x32 denoising.)
* "released": RED-diff's update (awd = True, its default):
      w   = A^+ (y - A x0_hat)    (the code's H^+ y - H^+ H x0_hat; sigma_y not used, §2.3)
      c_g = lambda sqrt(abar_s) sqrt(abar_k)
  and, for mask operators (RED-diff's `in2` inpainting), x0_hat <- (1 - m) x0_hat + m y (the noisy y) and
  g <- (1 - m) g after the VJP. Needs A and a closed-form A^+ (`A.pinv`). Its change of x0_hat per step is
  abar_k times the "tweedie" one (spec §2.2). With sigma_y > 0 it copies A^+ applied to the noise (gain 1 / s_i,
  up to ~1000 for the Gaussian blur's kept singular values) into the sample.
The paper's algorithm box is not available here (spec §6 gap 2); independent re-implementations (azula's
`PGDMSampler`, [IB]) use the RED-diff step weight sqrt(abar_s abar_k), which "paper" keeps.
For motion blur A^+ is the truncated circular pseudo-inverse (operators/blur.py) and the residual uses the model it
inverts (`dd.pinv_model`), as the projections of ddpm_steps.py do.

Which variant runs, per task (recorded: it is the `variant` hyper-parameter of the run's config):
    inpaint_random, inpaint_box, deblur_gaussian, sr4, denoise: "paper" (the operator has an SVD);
    deblur_motion: "released" (solvers/configs/pigdm.yaml task layer). Fallback rule: "paper" and "tweedie" need
    an SVD; the YAML sets "released" for every Table 1 task without one, and "paper" / "tweedie" on an operator
    without an SVD are refused (UnsupportedTask), never replaced silently. Nonlinear tasks (phase retrieval, HDR, nonlinear blur):
    unsupported (RED-diff's heuristics for them, §2.4, are not reproduced).

Budget: N forward + N backward NFE per image. The guidance is reported to observers as event "likelihood_step"
(grad = -g, the descent direction of the applied update up to the positive weight lr = c_g; prior_direction =
x0_hat - x_k / sqrt(abar_k)), computed only when an observer is attached.
"""
from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import torch

from operators.base import Operator
from operators.inpainting import MaskOperator
from solvers import ddpm_steps as dd
from solvers.base import RNG, Solver, SolverError
from solvers.ddrm import ddrm_timesteps

Tensor = torch.Tensor

VARIANTS = ("paper", "tweedie", "released")


def pigdm_timesteps(num_steps: int, num_train_steps: int = 1000) -> list[int]:
    """RED-diff's grid, descending: the multiples of 1000 // N below 1000 (990, ..., 10, 0 for N = 100)."""
    return ddrm_timesteps(num_steps, num_train_steps)


def ddim_coefficients(abar_k: float, abar_s: float, eta: float) -> tuple[float, float]:
    """(c1, c2) of the DDIM step k -> s (standard DDIM variance times eta)."""
    c1 = eta * math.sqrt(max((1 - abar_k / abar_s) * (1 - abar_s) / (1 - abar_k), 0.0))
    return c1, math.sqrt(max(1 - abar_s - c1**2, 0.0))


def guidance_coefficient(variant: str, abar_k: float, abar_s: float, c2: float) -> float:
    """c_g / lambda: "paper" and "released" sqrt(abar_s abar_k); "tweedie" (sqrt(abar_s) - c2 sqrt(abar_k /
    (1 - abar_k))) sigma_k^2 sqrt(abar_k) (the DDIM step of the guided score; beta' sqrt(abar_s / abar_k) at eta = 1)."""
    if variant == "tweedie":
        return (math.sqrt(abar_s) - c2 * math.sqrt(abar_k / (1 - abar_k))) * (1 - abar_k) / math.sqrt(abar_k)
    return math.sqrt(abar_s * abar_k)


def noisy_guidance(y: Tensor, A: Operator, scale_by_r2: bool) -> Callable[[Tensor, float], Tensor]:
    """w(x0, r2) = A^T (r2 A A^T + sigma_y^2 I)^{-1} (y - A x0) through the operator's SVD, times r2 when
    `scale_by_r2` ("paper"; "tweedie" without)."""
    svd = A.svd
    s = svd.singulars(y.shape[0]).to(dtype=y.dtype, device=y.device)[:, : svd.m]
    u_y = svd.Ut(y)
    var_y = float(A.sigma_y) ** 2

    def w(x0: Tensor, r2: float) -> Tensor:
        residual = u_y - s * svd.Vt(x0)[:, : svd.m]
        denom = r2 * s * s + var_y
        gain = torch.where(s > 0, s / torch.where(s > 0, denom, torch.ones_like(denom)), torch.zeros_like(s))
        if scale_by_r2:
            gain = r2 * gain
        return svd.V(torch.nn.functional.pad(gain * residual, (0, svd.n - svd.m)))
    return w


def released_guidance(y: Tensor, A: Operator) -> Callable[[Tensor, float], Tensor]:
    """w(x0, r2) = A^+ (y - A x0) (RED-diff; r2 unused)."""
    forward = dd.pinv_model(A)
    return lambda x0, r2: A.pinv(y - forward(x0))


class PiGDM(Solver):
    """PiGDM: paper noisy form (default), the conditional-Tweedie form or RED-diff's update (module docstring)."""

    name = "pigdm"
    smoke: ClassVar[dict[str, Any]] = {"num_steps": 10}

    def supports(self, A: Operator) -> bool:
        if not (super().supports(A) and dd.has_pinv(A)):
            return False
        return self.variant == "released" or A.has_svd

    def budget(self) -> dict[str, int]:
        n = len(pigdm_timesteps(int(self.num_steps)))
        return {"nfe_forward": n, "nfe_backward": n}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.variant not in VARIANTS:
            raise SolverError(f"pigdm: variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")

    def _solve(self, y: Tensor, A: Operator, rng: RNG) -> Tensor:
        sch = self.prior.schedule
        ks = pigdm_timesteps(int(self.num_steps), sch.num_steps)
        abar = [float(sch.abar(k)) for k in ks] + [1.0]
        released = self.variant == "released"
        guidance = released_guidance(y, A) if released else noisy_guidance(y, A, self.variant == "paper")
        mask = A.param("mask", y) if released and isinstance(A, MaskOperator) else None
        eta, weight = float(self.eta), float(self.guidance_weight)

        x = math.sqrt(abar[0]) * A.pinv(y) + math.sqrt(1 - abar[0]) * rng.randn(self.prior.image_shape, like=y)
        for i, k in enumerate(ks):
            a_k, a_s = abar[i], abar[i + 1]
            c1, c2 = ddim_coefficients(a_k, a_s, eta)
            x_k = x.detach().requires_grad_(True)
            eps = self.prior.eps(x_k, k)
            x0 = self.prior.x0_from_eps(x_k, k, eps)  # unclipped (§2.2)
            w = guidance(x0.detach(), 1 - a_k)
            (g,) = torch.autograd.grad((w * x0).sum(), x_k)  # J^T w per image (images do not interact)
            x0, eps = x0.detach(), eps.detach()
            if mask is not None:  # RED-diff `in2`: paste the (noisy) measurement, mask the guidance
                x0 = (1 - mask) * x0 + mask * y
                g = (1 - mask) * g
            c_g = weight * guidance_coefficient(self.variant, a_k, a_s, c2)
            if self.observed:
                self.observe("likelihood_step", step=i, inner=0, k=k, x=x_k, grad=-g, lr=c_g,
                             prior_direction=x0 - x_k.detach() / math.sqrt(a_k))
            x = math.sqrt(a_s) * x0 + c_g * g + c2 * eps
            if c1 > 0:
                x = x + c1 * rng.randn_like(x0)
            self.check_finite(x, f"pigdm step k={k}")
        return x
