"""The exact isotropic Gaussian mixture on vectors, p(x0) = sum_k w_k N(x0; mu_k, v I), x0 in R^d.

This is the prior of the MCGdiff / DCPS Gaussian-mixture benchmark (spec gmm-benchmark.md §1, Variant M:
25 components on the 8-spaced grid, v = 1, chi-square weights), built for d up to 800 and thousands of
samples. (priors/gmm.py is the general mixture with full covariances: O(K d^2) memory and an eigenbasis per
component, unaffordable at d = 800.)

Shape: vectors are (B, 1, 1, d) "images" (image_shape (1, 1, d)). Every solver and operator of the project
takes (B, C, H, W) batches, so this layout lets all of them run unchanged; a (B, d) layout would need a
second code path in each. Operators flatten with `x.reshape(B, -1)` (operators/dense.py).

Data range: `data_range = None`. The image priors declare [-1, 1], and solvers clip their x0 estimates and
outputs to the prior's range (priors/base.py, solvers/base.py); the mixture's means reach +-16, so nothing
is clipped here (the spec's update formulas, §5, clip nothing either).

Closed forms (all exact; r = rank of the means, at most K; Q = an orthonormal basis of their span):
* denoiser at VE noise sigma (x = x0 + sigma n): responsibilities
  r_k(x) = softmax_k(log w_k + (<x, mu_k> - |mu_k|^2 / 2) / (v + sigma^2)), and
  D(x; sigma) = v / (v + sigma^2) x + sigma^2 / (v + sigma^2) sum_k r_k mu_k.
  <x, mu_k> = <Q^T x, Q^T mu_k>, so one call costs O(B d r + B K r): r = 2 for the grid mixture.
  The VP view (eps, x0 at index k of the prior's schedule) follows from `ExactPrior`.
* posterior of y = A x0 + sigma_y n, A = U diag(s) V_r^T (m x d, m <= d; `operators.dense.DenseOperator`
  gives these factors, any other linear operator is turned into its matrix by m forward calls):
  covariance (shared by the components) Sigma' = v I + V_r diag(c - v) V_r^T, c = v sigma_y^2 / (sigma_y^2 + v s^2);
  means m'_k = Sigma' (A^T y / sigma_y^2 + mu_k / v);
  weights w'_k ∝ w_k N(y; A mu_k, sigma_y^2 I + v A A^T) = w_k N(U^T (y - A mu_k); 0, diag(sigma_y^2 + v s^2)).
  Exact samples: m'_k + sqrt(v) z + V_r ((sqrt(c) - sqrt(v)) V_r^T z). Everything in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from priors.base import ExactPrior
from priors.schedule import VPSchedule

Tensor = torch.Tensor
Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class VectorPosterior:
    """The exact posterior mixture of B measurements: weights (B, K), means (B, K, d), and the shared
    covariance as V_r (P, d, m) with the variances c (P, m) along V_r's columns and v elsewhere (P = 1 or B)."""

    weights: Tensor
    means: Tensor
    right: Tensor
    variances: Tensor
    v: float

    def mean(self) -> Tensor:
        return (self.weights[..., None] * self.means).sum(1)

    def variance(self) -> Tensor:
        """(B, d) per-coordinate posterior variances: diag(Sigma') + the spread of the component means."""
        diag = self.v + torch.einsum("pdm,pm->pd", self.right**2, self.variances - self.v)  # (P, d)
        m = self.mean()
        spread = (self.weights[..., None] * self.means**2).sum(1) - m**2
        return diag + spread

    def samples(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(B, n, d) float64 exact draws, all from one generator (vectorised; component, then Gaussian)."""
        B, K, d = self.means.shape
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (B, n)
        z = torch.randn((B, n, d), generator=generator, dtype=torch.float64)
        return self._draw(comp, z)

    def _draw(self, comp: Tensor, z: Tensor) -> Tensor:
        mu = torch.gather(self.means, 1, comp[..., None].expand(-1, -1, self.means.shape[-1]))
        coef = self.variances.sqrt() - math.sqrt(self.v)  # (P, m)
        proj = torch.einsum("pdm,bnd->bnm", self.right, z) if self.right.shape[0] == 1 else \
            torch.einsum("bdm,bnd->bnm", self.right, z)
        corr = torch.einsum("pdm,bnm->bnd", self.right, proj * coef[:, None]) if self.right.shape[0] == 1 else \
            torch.einsum("bdm,bnm->bnd", self.right, proj * coef[:, None])
        return mu + math.sqrt(self.v) * z + corr


class VectorGMMPrior(ExactPrior):
    """Exact isotropic mixture sum_k w_k N(mu_k, v I) on (B, 1, 1, d) vectors (module docstring)."""

    name = "gmm_vector"
    data_range = None

    def __init__(self, weights: Sequence[float] | Tensor, means: Tensor, variance: float = 1.0,
                 schedule: VPSchedule | None = None) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(means.shape)}")
        K, d = means.shape
        super().__init__((1, 1, d), schedule)
        w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if w.shape != (K,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {K} non-negative numbers with a positive sum")
        if not variance > 0:
            raise ValueError(f"variance must be > 0, got {variance}")
        self.dim, self.variance = d, float(variance)
        _, sv, Vh = torch.linalg.svd(means, full_matrices=False)
        rank = int((sv > 1e-12 * max(float(sv.max()), 1e-300)).sum())
        basis = Vh[:max(rank, 1)].T.contiguous()  # (d, r)
        self.register_buffer("weights", w / w.sum())
        self.register_buffer("means", means)
        self.register_buffer("basis", basis)
        self.register_buffer("means_in_basis", means @ basis)  # (K, r)
        self.register_buffer("half_sq_norms", 0.5 * (means**2).sum(1))  # (K,)

    @classmethod
    def grid25(cls, dim: int, weights: Sequence[float] | Tensor | None = None, spacing: float = 8.0,
               **kwargs: Any) -> "VectorGMMPrior":
        """Spec §1: means (-8i, -8j, -8i, -8j, ...) for i, j in {-2..2} (i outer), d even; uniform weights
        unless given."""
        if dim < 2 or dim % 2:
            raise ValueError(f"the 25-component grid mixture needs an even dimension >= 2, got {dim}")
        ij = torch.tensor([(i, j) for i in range(-2, 3) for j in range(-2, 3)], dtype=torch.float64)
        means = (-spacing * ij).repeat(1, dim // 2)
        return cls(torch.ones(25) if weights is None else weights, means, **kwargs)

    # ------------------------------------------------------------------ exact denoiser
    def responsibilities(self, X: Tensor, total_variance: Tensor) -> Tensor:
        """r_k for flattened x (B, d) whose components are N(mu_k, total_variance I); total_variance (B, 1)."""
        dt = X.dtype
        c = X @ self.basis.to(dt)  # (B, r)
        inner = c @ self.means_in_basis.to(dt).T  # (B, K)
        logits = torch.log(self.weights.to(dt)) + (inner - self.half_sq_norms.to(dt)) / total_variance
        return torch.softmax(logits, dim=1)

    def _denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        B = x.shape[0]
        X = x.reshape(B, self.dim)
        dt = X.dtype
        s2 = sigma.to(device=x.device, dtype=dt).view(B, 1) ** 2
        tot = self.variance + s2
        r = self.responsibilities(X, tot)
        mean_mix = (r @ self.means_in_basis.to(dt)) @ self.basis.to(dt).T  # sum_k r_k mu_k, (B, d)
        return (self.variance / tot * X + s2 / tot * mean_mix).reshape(x.shape)

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, generator: Generators = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """n prior samples (n, 1, 1, d). One generator: drawn at once; a list of n: sample i from generator i."""
        if generator is None or isinstance(generator, torch.Generator):
            comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
            z = torch.randn((n, self.dim), generator=generator, dtype=torch.float64)
        else:
            gens = list(generator)
            if len(gens) != n:
                raise ValueError(f"got {len(gens)} generators for {n} samples; pass one per sample")
            comp = torch.cat([torch.multinomial(self.weights, 1, generator=g) for g in gens])
            z = torch.stack([torch.randn(self.dim, generator=g, dtype=torch.float64) for g in gens])
        x = self.means[comp] + math.sqrt(self.variance) * z
        return x.to(dtype).reshape(n, *self.image_shape)

    # ------------------------------------------------------------------ posterior
    def posterior(self, y: Tensor, A: Any, sigma_y: float | None = None) -> VectorPosterior:
        """The exact posterior of each row of y (B, m) under y = A x0 + sigma_y n (module docstring)."""
        B = y.shape[0]
        Y = y.reshape(B, -1).to(torch.float64)
        U, s, V = operator_svd(A, self.dim, B)
        sig = _noise_level(A, sigma_y)
        v = self.variance
        Ub = U.expand(B, -1, -1) if U.shape[0] == 1 else U
        sb = s.expand(B, -1) if s.shape[0] == 1 else s
        Vb = V.expand(B, -1, -1) if V.shape[0] == 1 else V
        uy = torch.einsum("bji,bj->bi", Ub, Y)  # U^T y, (B, m)
        mu_v = torch.einsum("kd,bdm->bkm", self.means, Vb)  # V_r^T mu_k, (B, K, m)
        resid = uy[:, None, :] - sb[:, None, :] * mu_v  # U^T (y - A mu_k)
        tot = sig**2 + v * sb**2  # (B, m)
        log_n = -0.5 * ((resid**2 / tot[:, None]).sum(-1) + torch.log(tot).sum(-1, keepdim=True)
                        + tot.shape[1] * math.log(2 * math.pi))
        weights = torch.softmax(torch.log(self.weights)[None] + log_n, dim=1)
        c = v * sig**2 / tot  # posterior variances along V_r, (B, m)
        # m'_k = Sigma' (A^T y / sig^2 + mu_k / v) = mu_k + V_r [ c (s U^T y / sig^2 + V_r^T mu_k / v) - V_r^T mu_k ]
        coord = c[:, None, :] * (sb[:, None, :] * uy[:, None, :] / sig**2 + mu_v / v) - mu_v
        means = self.means[None] + torch.einsum("bdm,bkm->bkd", Vb, coord)
        P = V.shape[0]
        return VectorPosterior(weights=weights, means=means, right=V, variances=c[:P] if P == 1 else c, v=v)

    def posterior_mean(self, y: Tensor, A: Any, sigma_y: float | None = None) -> Tensor:
        post = self.posterior(y, A, sigma_y)
        return post.mean().to(y.dtype).reshape(y.shape[0], *self.image_shape)

    def posterior_sample(self, y: Tensor, A: Any, generator: Generators = None,
                         sigma_y: float | None = None) -> Tensor:
        """One exact posterior sample per measurement (per-image generators, as the oracle passes them)."""
        post = self.posterior(y, A, sigma_y)
        B = y.shape[0]
        if generator is None or isinstance(generator, torch.Generator):
            comp = torch.multinomial(post.weights, 1, generator=generator)
            z = torch.randn((B, 1, self.dim), generator=generator, dtype=torch.float64)
        else:
            gens = list(generator)
            if len(gens) != B:
                raise ValueError(f"got {len(gens)} generators for a batch of {B}; pass one per image")
            comp = torch.stack([torch.multinomial(post.weights[b], 1, generator=g) for b, g in enumerate(gens)])
            z = torch.stack([torch.randn((1, self.dim), generator=g, dtype=torch.float64) for g in gens])
        return post._draw(comp, z)[:, 0].to(y.dtype).reshape(B, *self.image_shape)


def operator_svd(A: Any, d: int, batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """(U (P, m, m), s (P, m), V_r (P, d, m)) float64 of a linear operator on (B, 1, 1, d) vectors:
    the dense operator's own factors, else the SVD of its matrix built by forward calls."""
    if all(hasattr(A, a) for a in ("left", "singular_values", "right")):
        return A.left, A.singular_values, A.right
    if isinstance(A, torch.Tensor):
        M = A.to(torch.float64)
    else:
        if not getattr(A, "is_linear", False):
            raise ValueError(f"the mixture posterior needs a linear operator, got {getattr(A, 'name', A)!r}")
        eye = torch.eye(d, dtype=torch.float64).reshape(d, 1, 1, d)
        cols = A.forward(eye) if getattr(A, "n_params", 1) == 1 else None
        if cols is None:
            raise ValueError("pass a shared operator (one matrix) or a dense operator")
        M = cols.reshape(d, -1).T
    M = M if M.ndim == 3 else M[None]
    if M.shape[-2] > d:
        raise ValueError(f"the mixture posterior needs m <= d, got an operator with {M.shape[-2]} outputs")
    U, s, Vh = torch.linalg.svd(M, full_matrices=False)
    return U, s, Vh.transpose(-1, -2)


def _noise_level(A: Any, sigma_y: float | None) -> float:
    s = sigma_y if sigma_y is not None else getattr(A, "sigma_y", None)
    if s is None or float(s) <= 0:
        raise ValueError("the mixture posterior needs measurement noise sigma_y > 0 (pass sigma_y=)")
    return float(s)
