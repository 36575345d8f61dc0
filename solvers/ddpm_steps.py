"""Shared DDPM mechanism of the DPS family (DPS, DPPS, MCG, Score-SDE); defines no solver.

Spec solvers-baselines.md §1.2 (guided-diffusion `p_sample`, `timestep_respacing`), written for
a respaced grid k_0 > k_1 > ... > k_{S-1} = 0 of the 1000 training indices (S = 1000: every index).

One ancestral step from x_k to x_{k'} (k' = next index of the grid, abar_{-1} := 1):

    beta'      = 1 - abar_k / abar_{k'}                       (respaced beta; = beta_k when k' = k - 1)
    (eps, v)   = prior.model_output(x_k, k)                   (the model always sees the original index k)
    x0_hat     = clip_[-1,1]((x_k - sqrt(1 - abar_k) eps) / sqrt(abar_k))     (clip inside the graph)
    mean       = c_x0 x0_hat + c_xk x_k,
                 c_x0 = beta' sqrt(abar_{k'}) / (1 - abar_k),  c_xk = (1 - abar_{k'}) sqrt(1 - beta') / (1 - abar_k)
    log s^2    = f log beta' + (1 - f) log beta~',  f = (v + 1) / 2,  beta~' = beta' (1 - abar_{k'}) / (1 - abar_k)
                 (learned range; v None -> "fixed small" log beta~'; beta~' of the final step (k' = -1, where it
                  is 0) replaced by that of the step before, as guided-diffusion's `posterior_log_variance_clipped`)
    x_{k'}     = mean + s z,  z ~ N(0, I),  no noise at the last step (k' = -1).

On the full grid this is exactly `prior.log_variance(k, v, like)` (tests/test_solver_dps_family.py checks it);
that method only knows unit strides, so the respaced variance is computed here from the same formula.

Grid: guided-diffusion `space_timesteps(1000, [S])`: k = round(i * 999 / (S - 1)), i = 0..S-1 (S = 1000 is the
identity), so a smoke run with S = 20 is the same sampler on a coarser grid.

Guidance pieces: `residual_norm` is ||y - A(x0_hat)||_2 PER IMAGE (shape (B,)); the released DPS code takes
one norm over the whole batch tensor, which couples the images of a batch (spec §3.1 step 2); with one image
per batch both agree. `norm_gradient` is grad_{x_k} of the per-image norms (one backward pass per image;
summing per-image norms keeps the gradients separate).

Measurement noise: none of the DPS-family updates reads sigma_y (zeta, the candidate distance and the
projections use y as given). DPS's step sizes were tuned for sigma_y = 0.05 on [-1, 1] images, which is our
unit (spec §0.1; DPPS's configs used 0.01 in the same unit), so no conversion is needed (this paragraph is
the one place that states it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from operators.base import LinearOperator, Operator
from priors.base import DiffusionPrior
from priors.schedule import VPSchedule

Tensor = torch.Tensor


@dataclass(frozen=True)
class DDPMStep:
    """Coefficients of one ancestral step k -> k_prev of a (respaced) grid."""

    k: int
    k_prev: int  # -1 at the last step
    abar: float
    abar_prev: float
    c_x0: float
    c_xk: float
    log_var_min: float  # log beta~' (clipped)
    log_var_max: float  # log beta'

    @property
    def last(self) -> bool:
        return self.k_prev < 0

    @property
    def snr(self) -> float:
        """abar_k / (1 - abar_k) at the current index."""
        return self.abar / (1.0 - self.abar)


def timesteps(num_steps: int, num_train_steps: int = 1000) -> list[int]:
    """Evenly spaced training indices, descending (guided-diffusion `space_timesteps` with one section)."""
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"num_steps must be in [1, {num_train_steps}], got {num_steps}")
    if num_steps == 1:
        return [num_train_steps - 1]
    stride = (num_train_steps - 1) / (num_steps - 1)
    return sorted({round(i * stride) for i in range(num_steps)}, reverse=True)


def grid_budget(num_steps: int, backward: bool) -> dict[str, int]:
    """Per-image NFE of a sampler making one network call per grid step (and one VJP if `backward`)."""
    n = len(timesteps(num_steps))
    return {"nfe_forward": n, "nfe_backward": n if backward else 0}


def ddpm_grid(schedule: VPSchedule, num_steps: int) -> list[DDPMStep]:
    """The ancestral steps of the `num_steps`-step grid, from the noisiest index down to 0."""
    ks = timesteps(num_steps, schedule.num_steps)
    ab = schedule.alphas_cumprod
    steps = []
    for i, k in enumerate(ks):
        k_prev = ks[i + 1] if i + 1 < len(ks) else -1
        a, a_prev = float(ab[k]), (float(ab[k_prev]) if k_prev >= 0 else 1.0)
        beta = 1.0 - a / a_prev
        beta_tilde = beta * (1.0 - a_prev) / (1.0 - a)
        steps.append(dict(k=k, k_prev=k_prev, abar=a, abar_prev=a_prev,
                          c_x0=beta * math.sqrt(a_prev) / (1.0 - a),
                          c_xk=(1.0 - a_prev) * math.sqrt(1.0 - beta) / (1.0 - a),
                          beta=beta, beta_tilde=beta_tilde))
    if len(steps) > 1:  # beta~ of the last step (k' = -1) is 0: use the previous step's, as guided-diffusion
        steps[-1]["beta_tilde"] = steps[-2]["beta_tilde"]
    else:
        steps[-1]["beta_tilde"] = steps[-1]["beta"]
    return [DDPMStep(k=s["k"], k_prev=s["k_prev"], abar=s["abar"], abar_prev=s["abar_prev"],
                     c_x0=s["c_x0"], c_xk=s["c_xk"], log_var_min=math.log(s["beta_tilde"]),
                     log_var_max=math.log(s["beta"])) for s in steps]


@dataclass
class Prediction:
    """What one model evaluation at x_k gives the step: eps, v, x0_hat (clipped) and the posterior mean."""

    eps: Tensor
    v: Tensor | None
    x0: Tensor
    mean: Tensor


def predict(prior: DiffusionPrior, x: Tensor, step: DDPMStep, clip: bool = True) -> Prediction:
    """One counted model evaluation at x_k; x0_hat is clipped inside the autograd graph."""
    eps, v = prior.model_output(x, step.k)
    x0 = prior.x0_from_eps(x, step.k, eps, clip=clip)
    return Prediction(eps=eps, v=v, x0=x0, mean=step.c_x0 * x0 + step.c_xk * x)


def denoising_direction(x: Tensor, pred: Prediction, step: DDPMStep) -> Tensor:
    """The denoiser's update at x_k for diagnostics (observers): x0_hat - x_k / sqrt(abar_k), i.e. D(x) - x in the
    VE variable x_k / sqrt(abar_k) (x0_hat as the step uses it, clipped). It is the direction of the SPGD paper's
    denoising gradient (its Eq. 9 / App. A: the step minus the fixed rescaling x_k / sqrt(alpha_k) equals
    c_x0 (x0_hat - x_k / sqrt(abar_k))). Detached."""
    return (pred.x0.detach() - x.detach() / math.sqrt(step.abar))


def log_variance(step: DDPMStep, v: Tensor | None, like: Tensor) -> Tensor:
    """Learned-range log variance of the step (fixed small when v is None), shaped like `like`."""
    if v is None:
        return torch.full_like(like, step.log_var_min)
    f = (v.detach() + 1) / 2
    return f * step.log_var_max + (1 - f) * step.log_var_min


def step_std(step: DDPMStep, v: Tensor | None, like: Tensor) -> Tensor:
    """s_k, shaped like `like` (zero at the last step)."""
    if step.last:
        return torch.zeros_like(like)
    return torch.exp(0.5 * log_variance(step, v, like))


def ancestral_noise(step: DDPMStep, v: Tensor | None, like: Tensor, rng) -> Tensor:
    """s_k z with z from each image's own stream; nothing is drawn at the last step."""
    if step.last:
        return torch.zeros_like(like)
    return step_std(step, v, like) * rng.randn_like(like)


def start_noise(prior: DiffusionPrior, y: Tensor, rng) -> Tensor:
    """x_T ~ N(0, I) of the prior's image shape, one stream per image."""
    return rng.randn(prior.image_shape, like=y)


def residual_norm(y: Tensor, A: Operator, x0: Tensor) -> Tensor:
    """||y - A(x0)||_2 per image, shape (B,)."""
    return torch.linalg.vector_norm((y - A(x0)).flatten(1), dim=1)


def norm_gradient(norms: Tensor, x: Tensor) -> Tensor:
    """grad_x of each image's norm (norms (B,) built from x); one backward pass per image."""
    (g,) = torch.autograd.grad(norms.sum(), x)
    return g


def noised_measurement(y: Tensor, abar: float, rng) -> Tensor:
    """q(y, k) = sqrt(abar) y + sqrt(1 - abar) z (Score-SDE / MCG projections), z from each image's stream."""
    return math.sqrt(abar) * y + math.sqrt(1.0 - abar) * rng.randn_like(y)


def has_pinv(A: Operator) -> bool:
    """Whether A is linear with a closed-form pseudo-inverse (structural check, nothing is evaluated)."""
    return bool(A.is_linear) and type(A).pinv is not LinearOperator.pinv


def project_onto_measurement(x: Tensor, y_k: Tensor, A: Operator,
                             pinv: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Projection onto {x : A x = y_k}: x - A^+(A x - y_k) (spec §8.1, general linear A).

    For the inpainting mask A^+ = A = m, so this is (1 - m) x + m y_k, the Score-SDE / MCG code.
    An operator whose `pinv` is exact only for an approximating linear model exposes that model as
    `A.pinv_forward` (motion blur: the circular model, operators/blur.py); the residual then uses it, so
    the step stays an orthogonal projection (with the reflect-padded A, I - A_c^+ A has norm 2-4 and the
    iterated projections diverge). `pinv`: the pseudo-inverse to use (`projection_pinv(A, threshold)`);
    A.pinv when None.
    """
    return x - (pinv or A.pinv)(pinv_model(A)(x) - y_k)


def projection_pinv(A: Operator, threshold: float) -> Callable[[Tensor], Tensor]:
    """A^+ with the singular values below `threshold` x (largest singular value) treated as zero.

    Why: the projection x - A^+(A x - y_k) copies A^+ applied to the measurement noise into the sample
    at every step; a singular value s amplifies it by 1/s. The operators' own `pinv` keeps singular values
    down to DDRM's 3e-2 (for the separable Gaussian blur on each 1-D factor, so 2-D values down to 1e-3 are
    inverted), which turns sigma_y = 0.05 into checkerboard noise on the blurs. The threshold is relative to
    the largest singular value (a cap 1/threshold on the condition number of the inverted part), so it is
    one number for every operator: with threshold < 1/2, masks (singular values 0/1) and the bicubic SR
    operator (0.124 .. 0.25 at any size, ratio > 0.49) keep their exact pinv.

    Mechanism by what the operator offers (no task names): an exact separable SVD (`svd_at(0)`: Gaussian
    blur, SR) -> V S_t^+ U^T on the 2-D singular values; a circular spectrum (`pinv_circular`: motion blur,
    whose nonnegative kernels sum to 1, so the largest |K(f)| = K(0) = 1) -> that spectrum truncated at
    threshold x max sum(kernel); otherwise (masks) A.pinv, exact.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"projection_threshold must be in (0, 1) (a fraction of the largest singular value), "
                         f"got {threshold}")
    if hasattr(A, "svd_at"):
        svd = A.svd_at(0.0)
        inverses: dict[tuple, Tensor] = {}  # the truncated 1/s per (dtype, device), computed once

        def pinv_svd(y: Tensor) -> Tensor:
            u = svd.Ut(y)
            key = (u.dtype, u.device)
            if key not in inverses:
                s = svd.singulars().to(dtype=u.dtype, device=u.device)
                keep = (s > 0) & (s >= threshold * s.amax(dim=1, keepdim=True))
                inverses[key] = torch.where(keep, 1 / torch.where(keep, s, torch.ones_like(s)),
                                            torch.zeros_like(s))[:, : svd.m]
            return svd.V(torch.nn.functional.pad(inverses[key] * u, (0, svd.n - svd.m)))
        return pinv_svd
    if hasattr(A, "pinv_circular"):
        s_max = float(A.kernel.flatten(1).sum(1).max())  # = max |K(f)| for nonnegative kernels
        cut = max(threshold * s_max, getattr(A, "pinv_threshold", 0.0))
        return lambda y: A.pinv_circular(y, cut)
    return A.pinv


def pinv_model(A: Operator) -> Callable[[Tensor], Tensor]:
    """The linear map `A.pinv` is the exact pseudo-inverse of: `A.pinv_forward` where the operator has one
    (motion blur: the circular model), else A itself."""
    return getattr(A, "pinv_forward", A)


def check_positions(num_steps: int) -> set[int]:
    """Step positions after which the samplers test for NaN/inf (a quarter, half, three quarters, end)."""
    return {max(num_steps * q // 4 - 1, 0) for q in (1, 2, 3, 4)}
