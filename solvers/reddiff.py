"""RED-diff: variational posterior sampling with a diffusion prior (Mardani et al., ICLR 2024).

Spec: shared/spec/solvers-baselines.md §6 (code `[REDdiff] algos/reddiff.py`), §0.1, §10.9.

A point estimate mu (Dirac variational posterior, sigma_x0 = 0) is optimised by Adam (betas
(0.9, 0.99), eps 1e-8, no weight decay; class `Adam` below) over the descending time grid with
skip = 1000 // num_steps, k in {0, skip, 2 skip, ...} (num_steps 1000: k = 999, ..., 0). At each k:

    eps ~ N(0, I),  x_k = sqrt(abar_k) mu + sqrt(1 - abar_k) eps,  eps_hat = eps_theta(x_k, k)
    L_k(mu) = v * 1/2 mean((y - A mu)^2) + w_k * mean(sg(eps_hat - eps) * mu),   w_k = lam * weight(k)
    mu <- Adam step on grad_mu L_k

sg = stop-gradient: the network is never differentiated (0 backward NFE). weight(k) is one of
`denoise_term_weight`: linear sigma_k = sqrt((1 - abar_k) / abar_k) (1/sqrt(SNR), the default),
sqrt, square, log (log(1 + sigma_k)), trunc_linear (min(sigma_k, 1)), power2over3, const.
The means are taken per image (the code's means run over the batch too; per image keeps the images
independent and only rescales both terms by the batch size, which Adam is invariant to up to eps).
Output: mu as it was before the final Adam step (the code returns the prediction at the last k).

Initialisation mu_0 = A^+ y (code: SVD pseudo-inverse). For operators without `pinv` (motion blur
with reflect boundary, nonlinear operators) the spec leaves it open; chosen by us: y itself when y
has the image's shape (blurs, HDR), else A^T y for linear operators, else zeros.

Noise: the measurement noise never enters the update ([REDdiff] `sigma_y` only generates y, §0.1),
so A.sigma_y is not read.

Budget per image: one forward NFE per grid point (= num_steps when it divides 1000), 0 backward.
"""
from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import torch

from operators.base import Operator
from solvers.base import RNG, Solver, SolverError, initial_estimate

Tensor = torch.Tensor

#: `denoise_term_weight` options of [REDdiff] (spec §6.1), as functions of sigma_k
WEIGHTS: dict[str, Callable[[float], float]] = {
    "linear": lambda s: s,
    "sqrt": math.sqrt,
    "square": lambda s: s * s,
    "log": math.log1p,
    "trunc_linear": lambda s: min(s, 1.0),
    "power2over3": lambda s: s ** (2 / 3),
    "const": lambda s: 1.0,
}


def time_grid(num_steps: int, total: int = 1000) -> list[int]:
    """Descending DDPM indices: skip = total // num_steps, k in {0, skip, ...} reversed."""
    if not 1 <= num_steps <= total:
        raise SolverError(f"reddiff: num_steps must be in [1, {total}], got {num_steps}")
    return list(range(0, total, total // num_steps))[::-1]


class REDDiff(Solver):
    name = "reddiff"
    smoke: ClassVar[dict[str, Any]] = {"num_steps": 20}

    def budget(self) -> dict[str, int]:
        return {"nfe_forward": len(time_grid(int(self.num_steps), self.prior.schedule.num_steps)),
                "nfe_backward": 0}

    def _solve(self, y: Tensor, A: Operator, rng: RNG) -> Tensor:
        if self.denoise_term_weight not in WEIGHTS:
            raise SolverError(f"reddiff: denoise_term_weight must be one of {sorted(WEIGHTS)}, "
                              f"got {self.denoise_term_weight!r}")
        weight = WEIGHTS[self.denoise_term_weight]
        sched = self.prior.schedule
        mu = initial_estimate(y, A, self.prior.image_shape).detach().clone()
        adam = Adam(float(self.lr), betas=(0.9, 0.99))
        n_x = mu[0].numel()
        x_out = mu
        for i, k in enumerate(time_grid(int(self.num_steps), sched.num_steps)):
            ab = float(sched.abar(k))
            w = float(self.lam) * weight(math.sqrt((1 - ab) / ab))
            eps = rng.randn_like(mu)
            with torch.no_grad():
                eps_hat = self.prior.eps(math.sqrt(ab) * mu + math.sqrt(1 - ab) * eps, k)
            with torch.enable_grad():  # gradient of the data term only (the operator, not the network)
                mu_g = mu.requires_grad_(True)
                data = 0.5 * (y - A(mu_g)).pow(2).flatten(1).mean(1)     # per-image mean
                (g_data,) = torch.autograd.grad(data.sum(), mu_g)
            grad = float(self.obs_weight) * g_data + w * (eps_hat - eps) / n_x
            if self.observed:  # prior direction: x0_hat(x_k) - mu = sqrt((1 - abar) / abar) (eps - eps_hat)
                self.observe("likelihood_step", step=i, inner=0, k=k, x=mu, grad=g_data,
                             prior_direction=math.sqrt((1 - ab) / ab) * (eps - eps_hat))
            x_out = mu.detach()  # the prediction at this k (returned for the last k)
            mu = adam.step(mu.detach(), grad)
            self.check_finite(mu, f"reddiff step k={k}; decrease lr (now {self.lr})")
        return x_out


class Adam:
    """Adam (Kingma & Ba 2015) with PyTorch's defaults otherwise (eps 1e-8, no weight decay):
    m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, x <- x - lr m_hat / (sqrt(v_hat) + eps),
    m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t). Element-wise, so images never interact."""

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8) -> None:
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m: Tensor | None = None
        self.v: Tensor | None = None
        self.t = 0

    def step(self, x: Tensor, g: Tensor) -> Tensor:
        if self.m is None:
            self.m, self.v = torch.zeros_like(x), torch.zeros_like(x)
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        m_hat = self.m / (1 - self.b1**self.t)
        v_hat = self.v / (1 - self.b2**self.t)
        return x - self.lr * m_hat / (v_hat.sqrt() + self.eps)
