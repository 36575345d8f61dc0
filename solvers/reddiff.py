"""RED-diff: variational posterior sampling with a diffusion prior (Mardani et al., ICLR 2024).

Spec: /work/shared/spec/solvers-baselines.md §6 (code `[REDdiff] algos/reddiff.py`), §0.1, §10.9.

A point estimate mu (Dirac variational posterior, sigma_x0 = 0) is optimised by Adam
(betas (0.9, 0.99), no weight decay) over the descending time grid k = k_S > ... > k_1 with
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

Budget per image: num_steps forward NFE, 0 backward.
"""
from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import torch

from operators.base import Operator, OperatorError
from solvers.base import RNG, Solver, SolverError

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


def initial_estimate(y: Tensor, A: Operator, image_shape: tuple[int, ...]) -> Tensor:
    """mu_0: A^+ y where the operator has a pseudo-inverse, else y (same shape) or A^T y."""
    try:
        return A.pinv(y)
    except (OperatorError, NotImplementedError, AttributeError):
        pass
    if tuple(y.shape[1:]) == tuple(image_shape):
        return y.clone()
    if A.is_linear:
        return A.adjoint(y)
    return y.new_zeros((y.shape[0], *image_shape))


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
        mu = initial_estimate(y, A, self.prior.image_shape).detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([mu], lr=float(self.lr), betas=(0.9, 0.99), weight_decay=0.0)
        n_x = mu[0].numel()
        x_out = mu.detach().clone()
        for k in time_grid(int(self.num_steps), sched.num_steps):
            ab = float(sched.abar(k))
            w = float(self.lam) * weight(math.sqrt((1 - ab) / ab))
            eps = rng.randn_like(mu)
            with torch.no_grad():
                x_k = math.sqrt(ab) * mu + math.sqrt(1 - ab) * eps
                eps_hat = self.prior.eps(x_k, k)
            x_out = mu.detach().clone()  # the prediction at this k (returned for the last k)
            with torch.enable_grad():
                r = y - A(mu)
                data = 0.5 * r.pow(2).flatten(1).mean(1)                   # per-image mean
                prior_term = ((eps_hat - eps).detach() * mu).flatten(1).sum(1) / n_x
                loss = (float(self.obs_weight) * data + w * prior_term).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            self.check_finite(mu.detach(), f"reddiff step k={k}; decrease lr (now {self.lr})")
        return x_out
