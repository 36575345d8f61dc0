"""The exact Gaussian prior: denoiser, schedule identities, posterior mean and samples vs dense algebra."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from operators.base import LinearOperator
from priors.gaussian import EMBEDDED_JSON, GaussianPrior, conjugate_gradient, embedded

F64 = torch.float64
COV = [[0.30, 0.20, 0.15], [0.20, 0.25, 0.18], [0.15, 0.18, 0.22]]


class Mask(LinearOperator):
    """y = m * x (m broadcast over the batch or one mask per image); self-adjoint."""

    def __init__(self, mask, sigma_y):
        super().__init__(tuple(mask.shape[1:]), sigma_y)
        self.mask = mask

    def forward(self, x):
        return x * self.mask

    def adjoint(self, y):
        return y * self.mask


class ZeroPadBlur(LinearOperator):
    """Depthwise 3x3 blur with zero padding (not circulant); adjoint = transposed convolution."""

    def __init__(self, shape, sigma_y):
        super().__init__(shape, sigma_y)
        k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 5.0, 2.0], [1.0, 2.0, 0.5]], dtype=F64)
        self.kernel = (k / k.sum()).expand(shape[0], 1, 3, 3).contiguous()

    def forward(self, x):
        return F.conv2d(x, self.kernel.to(x.dtype), padding=1, groups=x.shape[1])

    def adjoint(self, y):
        return F.conv_transpose2d(y, self.kernel.to(y.dtype), padding=1, groups=y.shape[1])


class Identity(LinearOperator):
    def __init__(self, shape, sigma_y):
        super().__init__(shape, sigma_y)
        self.name = "denoise"  # instance attribute: does not touch the operator registry

    def forward(self, x):
        return x

    def adjoint(self, y):
        return y


def make_prior(shape=(3, 8, 8), f0=1.5, gamma=2.5):
    return GaussianPrior(shape, mean=[0.1, -0.2, 0.05], colour_cov=COV, f0=f0, gamma=gamma)


def dense_covariance(shape, f0, gamma):
    """Sigma = C_colour (x) K built densely from the stated spectrum (independent of the prior's FFT code)."""
    C, H, W = shape
    fy, fx = torch.fft.fftfreq(H, 1 / H).to(F64), torch.fft.fftfreq(W, 1 / W).to(F64)
    s = (f0**2 + fy[:, None] ** 2 + fx[None, :] ** 2) ** (-gamma / 2)
    s = s / s.mean()
    dft = lambda n: torch.exp(-2j * math.pi * torch.outer(torch.arange(n), torch.arange(n)).to(F64) / n) / math.sqrt(n)  # noqa: E731
    Fm = torch.kron(dft(H), dft(W))
    K = (Fm.conj().T @ torch.diag(s.flatten().to(torch.complex128)) @ Fm).real
    return torch.kron(torch.tensor(COV, dtype=F64), K)


def dense_matrix(op, shape):
    n = math.prod(shape)
    return op.forward(torch.eye(n, dtype=F64).reshape(n, *shape)).reshape(n, -1).T


@pytest.fixture(scope="module")
def dense():
    return dense_covariance((3, 8, 8), 1.5, 2.5)


def test_pixel_covariance_is_the_colour_covariance(dense):
    p = make_prior()
    assert torch.diagonal(dense).reshape(3, -1).mean(1).tolist() == pytest.approx([0.30, 0.25, 0.22])
    assert p.spectrum.shape == (8, 5)
    # Sigma v computed by the prior equals the dense matrix
    v = torch.randn(2, 3, 8, 8, dtype=F64)
    torch.testing.assert_close(p.cov_apply(v).reshape(2, -1), v.reshape(2, -1) @ dense)
    torch.testing.assert_close(p.cov_apply(p.cov_apply(v, 0.5), 0.5), p.cov_apply(v))


def test_denoiser_is_the_exact_posterior_mean(dense):
    p = make_prior()
    mu = p.mean.view(1, 3, 1, 1).expand(1, 3, 8, 8).reshape(-1)
    sigma = torch.tensor([0.05, 0.7, 20.0], dtype=F64)
    x = torch.randn(3, 3, 8, 8, dtype=F64)
    d = p.denoise(x, sigma)
    for i, s in enumerate(sigma):
        ref = mu + dense @ torch.linalg.solve(dense + s**2 * torch.eye(192, dtype=F64), x[i].reshape(-1) - mu)
        torch.testing.assert_close(d[i].reshape(-1), ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(p.denoise(x, 0.0), x)
    assert p.denoise(x.float(), 1.0).dtype == torch.float32


def test_eps_and_x0_agree_with_the_schedule_identities(dense):
    p = make_prior()
    k = torch.tensor([0.0, 37.5, 400.0, 999.0], dtype=F64)
    xk = torch.randn(4, 3, 8, 8, dtype=F64)
    ab = p.schedule.abar(k).view(-1, 1, 1, 1)
    eps = p.eps(xk, k)
    x0 = p.x0(xk, k)
    torch.testing.assert_close(x0, p.denoise(xk / ab.sqrt(), p.schedule.sigma(k)))
    torch.testing.assert_close(eps, (xk - ab.sqrt() * x0) / (1 - ab).sqrt())
    torch.testing.assert_close(p.score(xk, k), -eps / (1 - ab).sqrt())
    # independent dense Tweedie for eps: E[eps | x_k] = sqrt(1-ab) (ab Sigma + (1-ab) I)^{-1} (x_k - sqrt(ab) mu)
    mu = p.mean.view(1, 3, 1, 1).expand(1, 3, 8, 8).reshape(-1)
    for i in range(4):
        a = ab[i].item()
        ref = math.sqrt(1 - a) * torch.linalg.solve(a * dense + (1 - a) * torch.eye(192, dtype=F64),
                                                     xk[i].reshape(-1) - math.sqrt(a) * mu)
        torch.testing.assert_close(eps[i].reshape(-1), ref, rtol=1e-8, atol=1e-8)


def test_nfe_counting_matches_a_network():
    p = make_prior()
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    out = p.denoise(x, 0.5)
    assert p.nfe.as_dict() == {"nfe_forward": 4, "nfe_backward": 0}
    (g,) = torch.autograd.grad(out.square().sum(), x)
    assert p.nfe.backward == 4 and torch.isfinite(g).all()
    p.eps(x, torch.tensor([1, 2, 3, 4])).sum().backward()
    assert p.nfe.as_dict() == {"nfe_forward": 8, "nfe_backward": 8}


@pytest.mark.parametrize("kind", ["mask", "blur", "identity"])
def test_posterior_mean_satisfies_the_normal_equations(dense, kind):
    p = make_prior()
    g = torch.Generator().manual_seed(3)
    shape = (3, 8, 8)
    if kind == "mask":
        op = Mask((torch.rand(1, 1, 8, 8, generator=g) < 0.3).to(F64).expand(1, *shape), 0.05)
    elif kind == "blur":
        op = ZeroPadBlur(shape, 0.02)
    else:
        op = Identity(shape, 0.1)
    x = p.sample(2, g, dtype=F64)
    y = op.measure(x, g)
    xm = p.posterior_mean(y, op, tol=1e-10)
    Am = dense_matrix(op, shape)
    mu = p.mean.view(1, 3, 1, 1).expand(1, *shape).reshape(-1)
    Q = Am.T @ Am / op.sigma_y**2 + torch.linalg.inv(dense)
    for i in range(2):
        rhs = Am.T @ y[i].reshape(-1) / op.sigma_y**2 + torch.linalg.solve(dense, mu)
        resid = Q @ xm[i].reshape(-1) - rhs
        assert resid.norm() <= 1e-7 * rhs.norm()
        torch.testing.assert_close(xm[i].reshape(-1), torch.linalg.solve(Q, rhs), rtol=1e-6, atol=1e-7)


def test_posterior_samples_have_the_exact_mean_and_covariance(dense):
    """Monte Carlo: n samples, mean within 5 standard errors, covariance within 6 standard errors."""
    shape, n = (3, 4, 4), 3000
    p = make_prior(shape, f0=1.0, gamma=2.0)
    Sigma = dense_covariance(shape, 1.0, 2.0)
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(1, 1, 4, 4, generator=g) < 0.5).to(F64).expand(1, *shape)
    op = Mask(mask, 0.3)
    y = op.measure(p.sample(1, g, dtype=F64), g)
    Am = dense_matrix(op, shape)
    mu = p.mean.view(1, 3, 1, 1).expand(1, *shape).reshape(-1)
    cov = torch.linalg.inv(Am.T @ Am / 0.09 + torch.linalg.inv(Sigma))
    mean = cov @ (Am.T @ y.reshape(-1) / 0.09 + torch.linalg.solve(Sigma, mu))
    xs = p.posterior_sample(y.expand(n, *shape), op, torch.Generator().manual_seed(1)).reshape(n, -1)
    var = torch.diagonal(cov)
    assert ((xs.mean(0) - mean).abs() <= 5 * (var / n).sqrt()).all()
    se = ((var[:, None] * var[None, :] + cov**2) / n).sqrt()
    assert ((torch.cov(xs.T) - cov).abs() <= 6 * se).all()
    # and the samples are not the mean (their spread is the posterior's)
    assert torch.cov(xs.T).diagonal().sum() == pytest.approx(var.sum().item(), rel=0.1)


def test_prior_samples_have_the_prior_covariance():
    shape, n = (3, 4, 4), 3000
    p = make_prior(shape, f0=1.0, gamma=2.0)
    Sigma = dense_covariance(shape, 1.0, 2.0)
    xs = p.sample(n, torch.Generator().manual_seed(5), dtype=F64).reshape(n, -1)
    var = torch.diagonal(Sigma)
    mu = p.mean.view(1, 3, 1, 1).expand(1, *shape).reshape(-1)
    assert ((xs.mean(0) - mu).abs() <= 5 * (var / n).sqrt()).all()
    se = ((var[:, None] * var[None, :] + Sigma**2) / n).sqrt()
    assert ((torch.cov(xs.T) - Sigma).abs() <= 6 * se).all()


def test_posterior_is_per_image_and_reproducible():
    p = make_prior()
    g = torch.Generator().manual_seed(7)
    masks = (torch.rand(3, 1, 8, 8, generator=g) < 0.4).to(F64).expand(3, 3, 8, 8)
    x = p.sample(3, g, dtype=F64)
    op = Mask(masks, 0.05)
    y = op.measure(x, g)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = p.posterior_sample(y, op, gens([10, 11, 12]))
    single = p.posterior_sample(y[1:2], Mask(masks[1:2], 0.05), gens([11]))
    torch.testing.assert_close(batch[1:2], single, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(p.posterior_mean(y, op)[2:], p.posterior_mean(y[2:], Mask(masks[2:], 0.05)))


def test_zero_noise_and_nonlinear_operators_are_clear_errors():
    p = make_prior()
    with pytest.raises(ValueError, match="sigma_y > 0"):
        p.posterior_mean(torch.zeros(1, 3, 8, 8), Mask(torch.ones(1, 3, 8, 8), 0.0))
    nonlinear = Mask(torch.ones(1, 3, 8, 8), 0.1)
    nonlinear.is_linear = False
    with pytest.raises(ValueError, match="needs a linear operator"):
        p.posterior_mean(torch.zeros(1, 3, 8, 8), nonlinear)


def test_conjugate_gradient_solves_spd_systems_per_image():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(2, 6, 6, generator=g, dtype=F64)
    M = M @ M.transpose(1, 2) + torch.eye(6, dtype=F64)
    b = torch.randn(2, 6, generator=g, dtype=F64)
    x, info = conjugate_gradient(lambda v: torch.einsum("bij,bj->bi", M, v), b, tol=1e-12, max_iter=50)
    torch.testing.assert_close(x, torch.linalg.solve(M, b))
    assert bool(info["converged"].all()) and int(info["iterations"].max()) <= 8


def test_fit_recovers_the_parameters_of_its_own_samples():
    truth = GaussianPrior((3, 32, 32), mean=[0.1, -0.2, 0.05], colour_cov=COV, f0=2.0, gamma=2.0)
    xs = truth.sample(256, torch.Generator().manual_seed(0), dtype=F64)
    fitted = GaussianPrior.fit(xs)
    assert fitted.image_shape == (3, 32, 32)
    torch.testing.assert_close(fitted.colour_cov, torch.tensor(COV, dtype=F64), rtol=0.1, atol=0.01)
    assert fitted.gamma == pytest.approx(2.0, abs=0.3)
    assert 1.0 <= fitted.f0 <= 4.0


def test_embedded_prior_is_self_contained():
    record = json.loads(EMBEDDED_JSON.read_text())
    assert set(record["fit_images"]).isdisjoint({"astronaut", "coffee", "chelsea", "rocket"})
    p = embedded(16)
    assert p.image_shape == (3, 16, 16) and p.name == "gaussian"
    assert p.gamma == record["gamma"] and 1.0 < p.gamma < 4.0
    torch.testing.assert_close(p.colour_cov, torch.tensor(record["colour_cov"], dtype=F64))
    x = p.sample(2, torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()


@pytest.mark.parametrize("task,params", [("inpaint_random", {}), ("deblur_gaussian", {"kernel_size": 9, "std": 1.5}),
                                         ("sr4", {}), ("denoise", {})])
def test_posterior_mean_with_the_real_operators(task, params):
    import operators
    p = make_prior((3, 16, 16))
    op = operators.get(task, image_shape=(3, 16, 16), seeds=[0, 1], sigma_y=0.05, **params)
    x = p.sample(2, torch.Generator().manual_seed(0))
    y = op.measure(x, torch.Generator().manual_seed(1))
    xm = p.posterior_mean(y, op)
    # stationarity of the MAP objective: A^T (A x - y) / s^2 + Sigma^{-1} (x - mu) = 0
    mu = p.mean.float().view(1, 3, 1, 1)
    grad = op.adjoint(op.forward(xm) - y) / 0.05**2 + p.cov_apply(xm - mu, -1.0)
    scale = (op.adjoint(y) / 0.05**2).flatten(1).norm(dim=1)
    assert (grad.flatten(1).norm(dim=1) <= 2e-3 * scale).all()
