"""Schedules: the linear DDPM table, its VE view, and the continuous VP conversion of SPGD/DAPS."""
import math

import pytest
import torch

from priors.schedule import ContinuousVP, VPSchedule, edm_sigmas


def test_linear_schedule_table():
    s = VPSchedule()
    assert s.betas.dtype == torch.float64 and s.betas.shape == (1000,)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert s.betas[500].item() == pytest.approx(1e-4 + 500 / 999 * (0.02 - 1e-4))
    prod = 1.0
    for k in range(10):
        prod *= 1 - (1e-4 + k / 999 * (0.02 - 1e-4))
    assert s.alphas_cumprod[9].item() == pytest.approx(prod, rel=1e-12)
    assert s.alphas_cumprod_prev[0].item() == 1.0
    assert torch.equal(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])


def test_abar_and_sigma_at_integer_and_fractional_index():
    s = VPSchedule()
    k = torch.tensor([0, 1, 250, 999])
    torch.testing.assert_close(s.abar(k), s.alphas_cumprod[k], rtol=1e-13, atol=0)
    assert s.abar(-1).item() == 1.0
    # fractional index: log-linear interpolation between neighbours
    mid = s.abar(10.5).log().item()
    assert mid == pytest.approx(0.5 * (s.alphas_cumprod[10].log() + s.alphas_cumprod[11].log()).item(), rel=1e-12)
    ab = s.alphas_cumprod[k]
    torch.testing.assert_close(s.sigma(k), torch.sqrt((1 - ab) / ab))
    # published values (spec seed §1): discrete sigma at 999 and 500
    assert s.sigma(999).item() == pytest.approx(157.4, abs=0.05)
    assert s.sigma(500).item() == pytest.approx(3.44, abs=0.005)


def test_index_of_sigma_inverts_sigma():
    s = VPSchedule()
    k = torch.tensor([0.0, 3.25, 100.0, 512.7, 998.5], dtype=torch.float64)
    torch.testing.assert_close(s.index_of_sigma(s.sigma(k)), k, atol=1e-8, rtol=0)
    sig = torch.tensor([0.02, 0.5, 7.0, 120.0], dtype=torch.float64)
    torch.testing.assert_close(s.sigma(s.index_of_sigma(sig)), sig, rtol=1e-10, atol=0)
    assert s.index_of_sigma(torch.tensor(0.0)).item() == pytest.approx(-1.0)


def test_continuous_vp_check_values():
    c = ContinuousVP()
    assert c.index(100.0).item() == pytest.approx(956.1, abs=0.05)
    assert c.index(0.1).item() == pytest.approx(26.97, abs=0.005)
    # spec seed §1: continuous sigma at index 999 and 500
    assert c.sigma_of_index(999).item() == pytest.approx(152.2, abs=0.05)
    assert c.sigma_of_index(500).item() == pytest.approx(3.42, abs=0.005)


def test_continuous_vp_conversions_invert():
    c = ContinuousVP()
    sig = torch.logspace(-3, 2.3, 50, dtype=torch.float64)
    torch.testing.assert_close(c.sigma(c.t(sig)), sig, rtol=1e-10, atol=0)
    torch.testing.assert_close(c.sigma_of_index(c.index(sig)), sig, rtol=1e-10, atol=0)
    t = torch.linspace(1e-3, 1, 20, dtype=torch.float64)
    torch.testing.assert_close(c.t(c.sigma(t)), t, rtol=1e-10, atol=1e-12)
    # beta(t) = beta_min + beta_d t integrates to log(1 + sigma^2)
    assert math.log1p(c.sigma(0.3).item() ** 2) == pytest.approx(0.1 * 0.3 + 0.5 * 19.9 * 0.09)


def test_edm_sigmas_endpoints_and_values():
    s = edm_sigmas(100, 100.0, 0.1, 7.0)
    assert s[0].item() == pytest.approx(100.0) and s[-1].item() == pytest.approx(0.1)
    # spec seed §2.1: 100, 95.65, 91.46, 87.43, ..., 0.1264, 0.1125, 0.1
    assert [round(v, 2) for v in s[1:4].tolist()] == [95.65, 91.46, 87.43]
    assert [round(v, 4) for v in s[-3:-1].tolist()] == [0.1264, 0.1125]
    assert bool((s[1:] < s[:-1]).all())
