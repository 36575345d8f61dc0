"""Distances between a solver's posterior samples and the exact posterior (the posterior tables' metrics).

Per measurement, with K solver samples S (K, n), the truth x (n,), and the exact posterior's mean m (n,),
per-coordinate variances v (n,) and K exact samples R (K, n) (n = pixels, or the vector's d):

* `mean_error`: RMSE between the solver's sample mean and m (in the data's units);
* `mmse_gap_db`: PSNR(m, x) - PSNR(mean(S), x) = 10 log10(MSE(mean(S), x) / MSE(m, x)) in dB. The peak
  value cancels, so it is the same on [-1, 1] or [0, 1] and needs no clipping; > 0 means the solver's mean
  is further from the truth than the Bayes-optimal (MMSE) estimate;
* `variance_ratio`: mean over coordinates of (unbiased sample variance of S / v), PER PIXEL (coordinate)
  basis; 1 = calibrated, < 1 overconfident; an exact sampler gives 1 in expectation;
* `coverage`: fraction of coordinates whose true value lies in the solver's central interval
  [S_(j), S_(K+1-j)] (order statistics, j = (K + 1) / 20). For exchangeable draws from the posterior and a
  truth drawn from the same posterior (prior-drawn truths) a new value falls between the j-th and the
  (K+1-j)-th of K draws with probability exactly (K + 1 - 2j) / (K + 1) = 0.90, whatever the distribution:
  this is why K must be 20 j - 1 (19, 39, ...). An interpolated 5 % / 95 % quantile of 16 samples would
  cover only about 0.79 for an exact sampler;
* `sliced_wasserstein`: mean over L random unit directions of the 1-D W1 distance between the projected
  sample sets (spec gmm-benchmark.md §4: W1 per slice, no square, no root), empirical measures with uniform
  weights (unequal sizes allowed). The same directions for every row of a table (paired comparison).

Aggregation: `mean_ci` (mean +- 1.96 std / sqrt(n), ddof 0, NaN ignored in mean/std but counted in n: the
MCGdiff aggregator, spec §4) for the GMM table, `mean_ci95` (t-interval, as bench/tables.py) for the
Gaussian table.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from scipy import stats as sps

Tensor = torch.Tensor


def interval_rank(K: int, level: float = 0.90) -> int:
    """j such that [S_(j), S_(K+1-j)] covers `level` exactly: K + 1 must be a multiple of 2 / (1 - level)."""
    j = (K + 1) * (1 - level) / 2
    if K < 1 or abs(j - round(j)) > 1e-9 or round(j) < 1:
        step = round(2 / (1 - level))
        raise ValueError(f"K = {K} samples give no exact central {level:.0%} interval from order statistics; "
                         f"use K = {step - 1}, {2 * step - 1}, ... (K + 1 a multiple of {step})")
    return int(round(j))


def mean_error(samples: Tensor, exact_mean: Tensor) -> float:
    return float(((samples.double().mean(0) - exact_mean.double()) ** 2).mean().sqrt())


def mmse_gap_db(samples: Tensor, exact_mean: Tensor, truth: Tensor) -> float:
    mse_solver = float(((samples.double().mean(0) - truth.double()) ** 2).mean())
    mse_exact = float(((exact_mean.double() - truth.double()) ** 2).mean())
    if mse_exact == 0:
        return math.nan
    return 10 * math.log10(max(mse_solver, 1e-300) / mse_exact)


def variance_ratio(samples: Tensor, exact_variance: Tensor) -> float:
    return float((samples.double().var(0, unbiased=True) / exact_variance.double()).mean())


def coverage(samples: Tensor, truth: Tensor, level: float = 0.90) -> float:
    K = samples.shape[0]
    j = interval_rank(K, level)
    ordered = samples.double().sort(0).values
    lo, hi = ordered[j - 1], ordered[K - j]
    t = truth.double()
    return float(((t >= lo) & (t <= hi)).double().mean())


def random_directions(L: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """(L, dim) float64 unit vectors, uniform on the sphere (normalised Gaussians)."""
    theta = torch.randn((L, dim), generator=generator, dtype=torch.float64)
    return theta / theta.norm(dim=1, keepdim=True)


def wasserstein1_1d(a: Tensor, b: Tensor) -> Tensor:
    """W1 between the empirical measures of the columns of a (n, L) and b (m, L): (L,)."""
    if a.shape[0] == b.shape[0]:
        return (a.sort(0).values - b.sort(0).values).abs().mean(0)
    a, b = a.sort(0).values, b.sort(0).values
    z = torch.cat([a, b], 0).sort(0).values  # (n + m, L)
    Fa = torch.searchsorted(a.T.contiguous(), z.T.contiguous(), right=True).T.double() / a.shape[0]
    Fb = torch.searchsorted(b.T.contiguous(), z.T.contiguous(), right=True).T.double() / b.shape[0]
    return ((Fa - Fb).abs()[:-1] * (z[1:] - z[:-1])).sum(0)


def sliced_wasserstein(a: Tensor, b: Tensor, directions: Tensor) -> float:
    """Mean over directions of W1 between the projections of a (n, dim) and b (m, dim)."""
    pa = a.reshape(a.shape[0], -1).double() @ directions.T
    pb = b.reshape(b.shape[0], -1).double() @ directions.T
    return float(wasserstein1_1d(pa, pb).mean())


def mean_ci(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, 1.96 std / sqrt(n), n): NaNs ignored by mean and std (ddof 0) but counted in n (spec §4)."""
    vals = [float(v) for v in values]
    n = len(vals)
    finite = [v for v in vals if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan, n
    mean = math.fsum(finite) / len(finite)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / len(finite))
    return mean, 1.96 * std / math.sqrt(n), n


def mean_ci95(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, half width of the 95 % t-interval, n) over the finite values (as bench/tables.py)."""
    vals = [float(v) for v in values if not math.isnan(float(v))]
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, 0
    mean = math.fsum(vals) / n
    if n == 1:
        return mean, math.nan, 1
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    return mean, float(sps.t.ppf(0.975, n - 1)) * std / math.sqrt(n), n
