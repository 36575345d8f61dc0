"""Posterior-table metrics (bench/posterior_metrics.py) checked on exact posteriors and a known-bad sampler."""
import math

import numpy as np
import pytest
import scipy.stats
import torch

import operators
from bench import posterior_metrics as pm
from priors.gmm_vector import VectorGMMPrior

K = 19  # exact 90 % interval from order statistics 1 and 19


def _gaussian_problems(n_problems: int, d: int = 6, m: int = 3, seed: int = 0):
    """A one-component (Gaussian) vector prior N(mu, 2 I), truths from the prior, y = A x + 0.3 n."""
    g = torch.Generator().manual_seed(seed)
    prior = VectorGMMPrior(torch.ones(1), torch.randn(1, d, generator=g, dtype=torch.float64), variance=2.0)
    out = []
    for _ in range(n_problems):
        A = operators.get("dense", image_shape=(1, 1, d), sigma_y=0.3,
                          matrix=torch.randn(m, d, generator=g, dtype=torch.float64))
        x = prior.sample(1, g, dtype=torch.float64)
        y = A.forward(x) + 0.3 * torch.randn(1, m, generator=g, dtype=torch.float64)
        out.append((prior.posterior(y, A), x.reshape(-1)))
    return out, g


def test_interval_rank_needs_K_plus_1_multiple_of_20():
    assert pm.interval_rank(19) == 1 and pm.interval_rank(39) == 2
    with pytest.raises(ValueError, match="K = 19, 39"):
        pm.interval_rank(16)


def test_exact_sampler_has_its_own_coverage_variance_ratio_one_and_zero_mmse_gap():
    problems, g = _gaussian_problems(300)
    cov, ratio = [], []
    for post, x in problems:
        s = post.samples(K, g)[0]
        cov.append(pm.coverage(s, x))
        ratio.append(pm.variance_ratio(s, post.variance()[0]))
    # coverage: 300 problems x 6 coordinates, Bernoulli(0.9) up to within-problem correlation: sd ~ 0.0075
    assert abs(np.mean(cov) - 0.90) < 0.03
    assert abs(np.mean(ratio) - 1.0) < 0.05  # unbiased variances: sd of the mean ~ 0.014
    post, x = problems[0]
    exact_mean = post.mean()[0]
    assert pm.mmse_gap_db(exact_mean[None], exact_mean, x) == pytest.approx(0.0, abs=1e-12)
    assert pm.mean_error(exact_mean[None], exact_mean) == 0.0


def test_overconfident_sampler_mean_plus_half_noise_has_variance_ratio_quarter_and_low_coverage():
    problems, g = _gaussian_problems(300, seed=1)
    cov, ratio = [], []
    for post, x in problems:
        m = post.mean()[0]
        s = m + 0.5 * (post.samples(K, g)[0] - m)
        cov.append(pm.coverage(s, x))
        ratio.append(pm.variance_ratio(s, post.variance()[0]))
    assert abs(np.mean(ratio) - 0.25) < 0.02
    # the interval is half as wide: P(|z| <= 0.5 * 1.645-ish) ~ 0.58 for the min/max of 19 draws
    assert np.mean(cov) < 0.70


def test_sliced_wasserstein_of_exact_sets_is_the_noise_floor_and_a_shift_is_seen():
    problems, g = _gaussian_problems(1, seed=2)
    post, _ = problems[0]
    dirs = pm.random_directions(500, 6, torch.Generator().manual_seed(3))
    ref = post.samples(2000, g)[0]
    floors = [pm.sliced_wasserstein(post.samples(2000, g)[0], ref, dirs) for _ in range(4)]
    again = pm.sliced_wasserstein(post.samples(2000, g)[0], ref, dirs)
    assert again < 2 * max(floors)  # an exact set sits at the floor
    shifted = pm.sliced_wasserstein(post.samples(2000, g)[0] + 0.5, ref, dirs)
    assert shifted > 5 * max(floors)


def test_wasserstein_1d_equals_scipy_for_equal_and_unequal_sizes():
    rng = np.random.default_rng(0)
    for n, m in ((50, 50), (40, 73)):
        a, b = rng.normal(size=n), rng.normal(1, 2, size=m)
        ours = float(pm.wasserstein1_1d(torch.tensor(a)[:, None], torch.tensor(b)[:, None])[0])
        assert ours == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=1e-12)


def test_sliced_wasserstein_is_the_mean_over_directions_of_projected_w1():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 3)), rng.normal(size=(30, 3))
    dirs = pm.random_directions(7, 3, torch.Generator().manual_seed(0))
    expect = np.mean([scipy.stats.wasserstein_distance(a @ t, b @ t) for t in dirs.numpy()])
    assert pm.sliced_wasserstein(torch.tensor(a), torch.tensor(b), dirs) == pytest.approx(expect, rel=1e-12)


def test_mean_ci_is_the_mcgdiff_aggregator():
    vals = [1.0, 2.0, math.nan, 4.0]
    mean, half, n = pm.mean_ci(vals)
    assert n == 4 and mean == pytest.approx(7 / 3)
    assert half == pytest.approx(1.96 * np.nanstd(vals) / 2)  # n counts the NaN row
