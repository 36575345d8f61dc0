"""An exact Gaussian-mixture prior on vectors: p(x0) = sum_k w_k N(x0; m_k, P_k), x0 in R^d.

"Images" have shape (C, H, W) and are flattened to d = C*H*W (tests use tiny shapes like (1, 1, 4)).
Everything is closed form, which makes this the standard posterior-accuracy test of diffusion
posterior samplers (MCGdiff, Cardoso et al. 2024 §5; DCPS; FPS): the diffused marginals, the denoiser
and the posterior under a linear-Gaussian measurement are all mixtures of Gaussians.

* Denoiser at VE noise sigma (x = x0 + sigma n):
  r_k(x) ∝ w_k N(x; m_k, P_k + sigma^2 I),
  D(x; sigma) = sum_k r_k(x) [m_k + P_k (P_k + sigma^2 I)^{-1} (x - m_k)],
  evaluated with the eigendecomposition P_k = V_k diag(e_k) V_k^T (computed once), differentiable in x,
  per-image sigma. eps / x0 at DDPM index k follow from the schedule identities (`ExactPrior`).
* Posterior of y = A x0 + sigma_y n (A an (m, d) matrix, (B, m, d) per-image matrices, or any
  LinearOperator, whose matrix is built column by column with A.forward):
  S_k = A P_k A^T + sigma_y^2 I,  G_k = P_k A^T S_k^{-1},
  weights  w'_k ∝ w_k N(y; A m_k, S_k),  means m'_k = m_k + G_k (y - A m_k),  covs P'_k = P_k - G_k A P_k.
  Computed in float64.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from priors.base import ExactPrior, randn
from priors.schedule import VPSchedule

Tensor = torch.Tensor
Generators = torch.Generator | Sequence[torch.Generator] | None


class GMMPrior(ExactPrior):
    """Exact Gaussian mixture prior; see the module docstring."""

    name = "gmm"

    def __init__(self, weights: Sequence[float] | Tensor, means: Tensor, covs: Tensor | None = None,
                 image_shape: tuple[int, int, int] | None = None, schedule: VPSchedule | None = None) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(means.shape)}")
        K, d = means.shape
        image_shape = tuple(image_shape) if image_shape is not None else (1, 1, d)
        if math.prod(image_shape) != d:
            raise ValueError(f"image_shape {image_shape} has {math.prod(image_shape)} entries but the means have d={d}")
        super().__init__(image_shape, schedule)
        w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if w.shape != (K,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {K} non-negative numbers with a positive sum, got {w.tolist()}")
        covs = torch.eye(d, dtype=torch.float64).expand(K, d, d).clone() if covs is None else \
            torch.as_tensor(covs, dtype=torch.float64)
        if covs.shape != (K, d, d):
            raise ValueError(f"covs must have shape ({K}, {d}, {d}), got {tuple(covs.shape)}")
        covs = 0.5 * (covs + covs.transpose(-1, -2))
        e, V = torch.linalg.eigh(covs)
        if e.min() < -1e-10 * e.abs().max():
            raise ValueError("covariances must be positive semi-definite")
        self.dim = d
        self.register_buffer("weights", w / w.sum())
        self.register_buffer("means", means)
        self.register_buffer("covs", covs)
        self.register_buffer("cov_eigvals", e.clamp_min(0))
        self.register_buffer("cov_eigvecs", V)

    @classmethod
    def grid25(cls, dim: int = 2, weights: Sequence[float] | Tensor | None = None, spacing: float = 8.0,
               **kwargs: Any) -> "GMMPrior":
        """The 25-component test mixture in the style of MCGdiff §5: means (s i, s j, s i, s j, ...)
        for i, j in {-2, ..., 2} (s = spacing = 8), identity covariances; weights uniform unless given."""
        ij = torch.tensor([(i, j) for i in range(-2, 3) for j in range(-2, 3)], dtype=torch.float64)
        means = spacing * ij.repeat(1, (dim + 1) // 2)[:, :dim]
        return cls(torch.ones(25) if weights is None else weights, means, None, **kwargs)

    # ------------------------------------------------------------------ exact denoiser
    def _denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        B = x.shape[0]
        X = x.reshape(B, self.dim)
        dt = x.dtype
        m, V, e = self.means.to(dt), self.cov_eigvecs.to(dt), self.cov_eigvals.to(dt)
        s2 = sigma.to(device=x.device, dtype=dt).view(B, 1, 1) ** 2
        c = torch.einsum("bkd,kde->bke", X[:, None, :] - m[None], V)  # coordinates in each eigenbasis
        var = e[None] + s2  # (B, K, d)
        log_n = -0.5 * ((c**2 / var).sum(-1) + torch.log(var).sum(-1) + self.dim * math.log(2 * math.pi))
        resp = torch.softmax(torch.log(self.weights.to(dt))[None] + log_n, dim=1)  # (B, K)
        comp = m[None] + torch.einsum("bke,kde->bkd", c * e[None] / var, V)
        return (resp[..., None] * comp).sum(1).reshape(x.shape)

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, generator: Generators = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """n prior samples (n, C, H, W); a list of n generators gives sample i its own stream."""
        x = _sample_mixture(self.weights.expand(n, -1), self.means.expand(n, -1, -1),
                            self.covs.expand(n, -1, -1, -1), generator)
        return x.to(dtype).reshape(n, *self.image_shape)

    # ------------------------------------------------------------------ posterior
    def posterior(self, y: Tensor, A: Any, sigma_y: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Exact posterior mixture of x0 given y = A x0 + sigma_y n: (weights (B, K), means (B, K, d),
        covariances (B, K, d, d)), float64. A: (m, d) or (B, m, d) matrix, or a LinearOperator."""
        B = y.shape[0]
        Y = y.reshape(B, -1).to(torch.float64)
        Amat = self.operator_matrix(A, B)
        s = _noise_level(A, sigma_y)
        m, P = self.means, self.covs
        AP = torch.einsum("bmd,kde->bkme", Amat, P)  # (B, K, m, d) = A P_k
        S = torch.einsum("bkme,bne->bkmn", AP, Amat) + s**2 * torch.eye(Amat.shape[1], dtype=torch.float64)
        L = torch.linalg.cholesky(S)
        resid = Y[:, None, :] - torch.einsum("bmd,kd->bkm", Amat, m)  # (B, K, m)
        sol = torch.cholesky_solve(resid[..., None], L)[..., 0]  # S^{-1} (y - A m_k)
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        log_n = -0.5 * ((resid * sol).sum(-1) + logdet + Amat.shape[1] * math.log(2 * math.pi))
        weights = torch.softmax(torch.log(self.weights)[None] + log_n, dim=1)
        means = m[None] + torch.einsum("bkmd,bkm->bkd", AP, sol)  # P A^T S^{-1} r (P symmetric)
        covs = P[None] - AP.transpose(-1, -2) @ torch.cholesky_solve(AP, L)
        return weights, means, 0.5 * (covs + covs.transpose(-1, -2))

    def posterior_mean(self, y: Tensor, A: Any, sigma_y: float | None = None) -> Tensor:
        w, mu, _ = self.posterior(y, A, sigma_y)
        return (w[..., None] * mu).sum(1).to(y.dtype).reshape(y.shape[0], *self.image_shape)

    def posterior_sample(self, y: Tensor, A: Any, generator: Generators = None,
                         sigma_y: float | None = None) -> Tensor:
        """One exact posterior sample per measurement (component, then Gaussian; per-image generators)."""
        w, mu, P = self.posterior(y, A, sigma_y)
        return _sample_mixture(w, mu, P, generator).to(y.dtype).reshape(y.shape[0], *self.image_shape)

    def operator_matrix(self, A: Any, batch: int) -> Tensor:
        """(B, m, d) float64 matrices of A (a matrix, per-image matrices, or a LinearOperator)."""
        if isinstance(A, torch.Tensor):
            M = A.to(torch.float64)
            M = M.expand(batch, -1, -1) if M.ndim == 2 else M
            if M.ndim != 3 or M.shape[0] != batch or M.shape[2] != self.dim:
                raise ValueError(f"operator matrix must be (m, {self.dim}) or ({batch}, m, {self.dim}), "
                                 f"got {tuple(A.shape)}")
            return M
        if not getattr(A, "is_linear", False):
            raise ValueError(f"the GMM posterior needs a linear operator, got {getattr(A, 'name', A)!r}")
        eye = torch.eye(self.dim, dtype=torch.float32)
        cols = [A.forward(eye[j].reshape(1, *self.image_shape).expand(batch, *self.image_shape).contiguous())
                .reshape(batch, -1) for j in range(self.dim)]
        return torch.stack(cols, dim=-1).to(torch.float64)


def _sample_mixture(weights: Tensor, means: Tensor, covs: Tensor, generator: Generators) -> Tensor:
    """One draw per row from sum_k weights[b, k] N(means[b, k], covs[b, k]) (float64)."""
    B, K, d = means.shape
    if generator is None or isinstance(generator, torch.Generator):
        gens = [generator] * B
    else:
        gens = list(generator)
        if len(gens) != B:
            raise ValueError(f"got {len(gens)} generators for a batch of {B}; pass one per image")
    out = []
    for b, g in enumerate(gens):
        k = int(torch.multinomial(weights[b].cpu(), 1, generator=g))
        e, V = torch.linalg.eigh(covs[b, k].cpu())
        z = randn((d,), g, dtype=torch.float64)
        out.append(means[b, k].cpu() + V @ (e.clamp_min(0).sqrt() * z))
    return torch.stack(out).to(means.device)


def _noise_level(A: Any, sigma_y: float | None) -> float:
    s = sigma_y if sigma_y is not None else getattr(A, "sigma_y", None)
    if s is None:
        raise ValueError("pass sigma_y when the operator is a plain matrix")
    if float(s) <= 0:
        raise ValueError("the GMM posterior needs measurement noise sigma_y > 0; "
                         "pass sigma_y=1e-3 for a near-noiseless case")
    return float(s)
