"""The exact Gaussian-mixture prior: denoiser and linear-Gaussian posterior vs brute-force integration."""
import math

import pytest
import torch

from operators.base import LinearOperator
from priors.gmm import GMMPrior

F64 = torch.float64


def small_mixture():
    means = torch.tensor([[-2.0, 1.0], [2.5, -1.0], [0.5, 3.0]], dtype=F64)
    covs = torch.tensor([[[1.0, 0.3], [0.3, 0.5]], [[0.4, -0.1], [-0.1, 0.8]], [[0.6, 0.0], [0.0, 0.2]]], dtype=F64)
    return GMMPrior([0.5, 0.3, 0.2], means, covs)


def grid_posterior(prior, loglik):
    """Brute force on a 2-D grid: posterior component weights and mean of p(x0) * exp(loglik(x0))."""
    u = torch.linspace(-9, 9, 721, dtype=F64)
    X = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    comps = []
    for w, m, P in zip(prior.weights, prior.means, prior.covs):
        r = X - m
        q = (r @ torch.linalg.inv(P) * r).sum(1)
        comps.append(w * torch.exp(-0.5 * q) / (2 * math.pi * torch.linalg.det(P).sqrt()))
    comps = torch.stack(comps, 1) * torch.exp(loglik(X))[:, None]  # (G, K)
    total = comps.sum()
    weights = comps.sum(0) / total
    mean = (comps.sum(1)[:, None] * X).sum(0) / total
    comp_means = (comps[:, :, None] * X[:, None, :]).sum(0) / comps.sum(0)[:, None]
    return weights, mean, comp_means


def test_posterior_equals_brute_force_integration():
    prior = small_mixture()
    A = torch.tensor([[1.0, 0.7]], dtype=F64)
    s = 0.6
    y = torch.tensor([[1.3]], dtype=F64)
    w, means, covs = prior.posterior(y, A, s)
    assert w.shape == (1, 3) and means.shape == (1, 3, 2) and covs.shape == (1, 3, 2, 2)
    bw, bmean, bcomp = grid_posterior(prior, lambda X: -0.5 * ((X @ A.T - y[0]) ** 2).sum(1) / s**2)
    torch.testing.assert_close(w[0], bw, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(means[0], bcomp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prior.posterior_mean(y, A, s).reshape(2), bmean, atol=1e-5, rtol=1e-5)
    # component covariance: Gaussian conditioning, (P^-1 + A^T A / s^2)^-1
    for k in range(3):
        ref = torch.linalg.inv(torch.linalg.inv(prior.covs[k]) + A.T @ A / s**2)
        torch.testing.assert_close(covs[0, k], ref)


def test_denoiser_equals_brute_force_posterior_mean():
    prior = small_mixture()
    x = torch.tensor([[0.3, 1.9], [2.0, -3.0]], dtype=F64).reshape(2, 1, 1, 2)
    sigma = torch.tensor([0.8, 1.7], dtype=F64)
    d = prior.denoise(x, sigma)
    for i in range(2):
        _, bmean, _ = grid_posterior(prior, lambda X: -0.5 * ((X - x[i].reshape(2)) ** 2).sum(1) / sigma[i] ** 2)
        torch.testing.assert_close(d[i].reshape(2), bmean, atol=1e-5, rtol=1e-5)
    # the denoiser is the identity-operator posterior mean
    torch.testing.assert_close(d[:1], prior.posterior_mean(x[:1].reshape(1, 2), torch.eye(2, dtype=F64), 0.8))


def test_eps_follows_the_schedule_and_counts():
    prior = small_mixture()
    xk = torch.randn(4, 1, 1, 2, requires_grad=True)
    k = torch.tensor([5.0, 120.0, 600.5, 999.0])
    eps = prior.eps(xk, k)
    ab = prior.schedule.abar(k).float().view(-1, 1, 1, 1)
    x0 = prior.denoise(xk / ab.sqrt(), prior.schedule.sigma(k))
    torch.testing.assert_close(eps, (xk - ab.sqrt() * x0) / (1 - ab).sqrt(), rtol=1e-4, atol=1e-4)
    torch.autograd.grad(eps.sum(), xk)
    assert prior.nfe.as_dict() == {"nfe_forward": 8, "nfe_backward": 4}


def test_posterior_with_an_operator_and_per_image_matrices():
    class Keep(LinearOperator):
        def __init__(self, sigma_y):
            super().__init__((1, 2, 2), sigma_y)

        def forward(self, x):
            return x.reshape(x.shape[0], -1)[:, [0, 3]] * torch.tensor([1.0, 2.0])

        def adjoint(self, y):
            raise NotImplementedError

    g = torch.Generator().manual_seed(0)
    prior = GMMPrior(torch.rand(4, generator=g), torch.randn(4, 4, generator=g, dtype=F64) * 3, image_shape=(1, 2, 2))
    y = torch.randn(2, 2, generator=g, dtype=F64)
    M = torch.zeros(2, 4, dtype=F64)
    M[0, 0], M[1, 3] = 1.0, 2.0
    via_op = prior.posterior(y, Keep(0.4))
    via_matrix = prior.posterior(y, torch.stack([M, M]), 0.4)
    for a, b in zip(via_op, via_matrix):
        torch.testing.assert_close(a, b)
    assert prior.posterior_mean(y, Keep(0.4)).shape == (2, 1, 2, 2)


def test_posterior_samples_match_the_posterior_moments():
    prior = small_mixture()
    A = torch.tensor([[1.0, 0.7]], dtype=F64)
    y = torch.tensor([[1.3]], dtype=F64)
    n = 4000
    w, means, covs = prior.posterior(y, A, 0.6)
    mean = (w[0, :, None] * means[0]).sum(0)
    second = (w[0, :, None, None] * (covs[0] + means[0, :, :, None] * means[0, :, None, :])).sum(0)
    cov = second - torch.outer(mean, mean)
    xs = prior.posterior_sample(y.expand(n, 1), A, torch.Generator().manual_seed(1), sigma_y=0.6).reshape(n, 2)
    assert ((xs.mean(0) - mean).abs() <= 5 * (cov.diagonal() / n).sqrt()).all()
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    a = prior.posterior_sample(y.expand(2, 1), A, gens, sigma_y=0.6)
    b = prior.posterior_sample(y, A, [torch.Generator().manual_seed(4)], sigma_y=0.6)
    torch.testing.assert_close(a[1:], b)


def test_prior_samples_and_grid25():
    p = GMMPrior.grid25(4)
    assert p.means.shape == (25, 4) and p.means[0].tolist() == [-16.0, -16.0, -16.0, -16.0]
    assert p.means[8].tolist() == [-8.0, 8.0, -8.0, 8.0]
    xs = p.sample(2000, torch.Generator().manual_seed(0)).reshape(2000, 4).double()
    nearest = torch.cdist(xs, p.means).argmin(1)
    counts = torch.bincount(nearest, minlength=25).double() / 2000
    assert ((counts - 0.04).abs() <= 5 * math.sqrt(0.04 * 0.96 / 2000)).all()


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="image_shape"):
        GMMPrior([1.0], torch.zeros(1, 4), image_shape=(1, 1, 3))
    with pytest.raises(ValueError, match="sigma_y > 0"):
        small_mixture().posterior(torch.zeros(1, 1), torch.ones(1, 2), 0.0)
