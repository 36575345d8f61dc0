"""DAPS (solvers/daps.py): schedules against the spec's checked values, the pieces against closed forms, and
accuracy on the exact Gaussian prior.

Exact pieces (spec solvers-more.md §3.1-§3.2, values checked there against the official code): the annealing
grid (201 poly-7 points, last replaced by 0), the inner ODE grids, the i/201 step-size decay; the Euler ODE
against a hand loop written in the code's form u + (tau' - tau)(u - D)/tau; one Langevin step against
v - gamma 2 A^T(A v - y)/tau^2 + sqrt(2 gamma) xi; the per-image NaN -> zeros rule.

Accuracy (same quantity and problems as tests/test_solver_spgd.py): ratio = ||x_hat - E[x|y]|| / s, s = RMS
distance of exact posterior samples to E[x|y] (about 1 for an exact posterior sampler). DAPS must beat A^T y
and stay below the bound (measured value in the comment, about 20 % margin). Random inpainting runs the full
DAPS-1K at 64x64; the other tasks run at 32x32 with 50 annealing steps (DAPS-250: same algorithm, coarser
annealing grid; motion blur with 25) to keep the suite fast (at 64x64 with DAPS-1K: gaussian 1.068, motion 1.160,
sr4 1.064).
"""
from __future__ import annotations

import math

import pytest
import torch

import operators
import solvers
from solvers.base import RNG
from solvers.daps import annealing_sigmas, data_gradient, langevin_step_size, ode_sigmas
from test_solver_spgd import gaussian_problem, prior_of_size, run


pytestmark = pytest.mark.usefixtures("one_thread")


def test_annealing_grid_matches_the_official_values():
    s = annealing_sigmas(200, 100.0, 0.1, 7.0)
    assert len(s) == 201 and s[0] == pytest.approx(100.0, rel=1e-12) and s[-1] == 0.0
    assert [round(v, 3) for v in s[:3]] == [100.0, 97.825, 95.691]
    assert [round(v, 5) for v in s[-4:-1]] == [0.11906, 0.11239, 0.10604]


def test_inner_ode_grids_match_the_official_values():
    spec = [100.0, 33.03, 8.856, 1.748, 0.2106, 0.01]  # spec more §3.1, to the digits given there
    assert ode_sigmas(100.0, 5, 0.01, 7.0) == pytest.approx(spec, rel=2e-4)
    small = ode_sigmas(annealing_sigmas(200, 100.0, 0.1, 7.0)[199], 5, 0.01, 7.0)
    assert [round(v, 4) for v in small] == [0.106, 0.0702, 0.0453, 0.0283, 0.0172, 0.01]


def test_step_size_decays_over_201():
    assert langevin_step_size(1e-4, 0, 200, 0.01) == 1e-4
    assert langevin_step_size(1.0, 199, 200, 0.01) == pytest.approx(1 - 199 / 201 * 0.99)  # 0.01985
    assert langevin_step_size(1.0, 199, 200, 0.01) == pytest.approx(0.019851, abs=1e-6)


def test_per_task_settings_follow_the_official_pixel_configs():
    prior = prior_of_size(32)
    lr = {t: solvers.get("daps", prior, task=t).lr for t in
          ("inpaint_random", "inpaint_box", "deblur_gaussian", "deblur_motion", "sr4", "phase_retrieval", "hdr",
           "deblur_nonlinear")}
    assert lr == {"inpaint_random": 1e-4, "inpaint_box": 5e-5, "deblur_gaussian": 1e-4, "deblur_motion": 5e-5,
                  "sr4": 1e-4, "phase_retrieval": 5e-5, "hdr": 2e-5, "deblur_nonlinear": 1e-5}
    assert solvers.get("daps", prior, task="deblur_nonlinear").mcmc_steps == 200
    s = solvers.get("daps", prior, task="sr4")
    assert (s.annealing_steps, s.ode_steps, s.mcmc_steps, s.tau, s.lr_min_ratio, s.adm) == (200, 5, 100, 0.01, 0.01, False)
    assert s.budget() == {"nfe_forward": 1000, "nfe_backward": 0}
    assert all(src for src in s.sources.values())


def test_prior_ode_is_the_euler_loop_of_the_code():
    p = gaussian_problem("sr4", size=32)
    solver = solvers.get("daps", p.prior, task="sr4")
    x = 8.0 * torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    p.prior.reset_counters()
    ours = solver._prior_ode(x, 8.0)
    assert p.prior.nfe.as_dict() == {"nfe_forward": 5, "nfe_backward": 0}
    taus, u = ode_sigmas(8.0, 5, 0.01, 7.0), x
    for tau, tau_next in zip(taus[:-1], taus[1:]):  # torchdiffeq euler on dx/dsigma = (x - D(x; sigma)) / sigma
        u = u + (tau_next - tau) * (u - p.prior.denoise(u, tau)) / tau
    assert torch.allclose(ours, u, atol=1e-5)


def test_one_langevin_step_is_the_closed_form():
    p = gaussian_problem("deblur_gaussian", size=32)
    solver = solvers.get("daps", p.prior, task="deblur_gaussian", mcmc_steps=1)
    x0_hat = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 0.5
    gamma, tau = 1e-4, 0.01
    v = solver._langevin(x0_hat, p.y, p.A, 3.0, gamma, 0, solvers.gradient_management.GradientManagement(),
                         RNG([torch.Generator().manual_seed(9)], 1))
    xi = RNG([torch.Generator().manual_seed(9)], 1).randn_like(x0_hat)
    grad = 2 * p.A.adjoint(p.A(x0_hat) - p.y) / tau**2  # linear A: grad ||A v - y||^2 = 2 A^T (A v - y)
    assert torch.allclose(data_gradient(x0_hat, p.y, p.A, tau), grad, rtol=1e-4, atol=1e-2)
    assert torch.allclose(v, x0_hat - gamma * grad + math.sqrt(2 * gamma) * xi, atol=1e-5)


def test_a_diverged_langevin_image_becomes_zeros_without_touching_the_others():
    p = gaussian_problem("inpaint_random", size=32)
    A = operators.get("inpaint_random", image_shape=(3, 32, 32), seeds=[0, 0], sigma_y=0.05)
    y = torch.cat([p.y, torch.full_like(p.y, float("nan"))])
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    solver = solvers.get("daps", p.prior, task="inpaint_random", annealing_steps=3, ode_steps=2, mcmc_steps=3)
    x0_hat = torch.zeros(2, 3, 32, 32)
    v = solver._langevin(x0_hat, y, A, 1.0, 1e-4, 0, solvers.gradient_management.GradientManagement(), RNG(gens, 2))
    assert torch.isfinite(v[0]).all() and v[0].abs().sum() > 0 and torch.equal(v[1], torch.zeros_like(v[1]))


@pytest.mark.parametrize("task", ["phase_retrieval", "hdr"])
def test_nonlinear_tasks_run(task):
    prior = prior_of_size(32)
    extra = {"variant": "daps"} if task == "phase_retrieval" else {}
    A = operators.get(task, image_shape=(3, 32, 32), seeds=[0], sigma_y=0.05, **extra)
    y = A.measure(prior.sample(1, [torch.Generator().manual_seed(0)]), [torch.Generator().manual_seed(1)])
    solver = solvers.get("daps", prior, task=task, **solvers.get("daps", prior).smoke)
    x = solver.solve(y, A, [torch.Generator().manual_seed(2)])
    assert x.shape == (1, 3, 32, 32) and torch.isfinite(x).all() and x.abs().sum() > 0
    assert prior.nfe.as_dict() == {"nfe_forward": 10, "nfe_backward": 0}


# measured ratios (A^T y in brackets): inpaint (64x64, DAPS-1K) 1.232 (3.07); 32x32 DAPS-250: gaussian 0.902
# (1.096), sr4 0.880 (1.769); motion at DAPS-125 (its 61x61 operator gradients dominate): 1.096 (1.554; 0.983
# at DAPS-250). Bounds about 1.2x the measured ratio.
CASES = {"inpaint_random": (64, {}, 1.5), "deblur_gaussian": (32, {"annealing_steps": 50}, 1.08),
         "deblur_motion": (32, {"annealing_steps": 25}, 1.3), "sr4": (32, {"annealing_steps": 50}, 1.06)}


@pytest.mark.parametrize("task", list(CASES))
def test_daps_beats_the_adjoint_and_stays_near_the_posterior_mean(task):
    size, overrides, bound = CASES[task]
    p = gaussian_problem(task, size=size)
    x, solver = run(p, "daps", task, **overrides)
    ratio, trivial = p.ratio(x), p.ratio(p.A.adjoint(p.y))
    assert ratio < trivial, (ratio, trivial)
    assert ratio < bound, ratio


def test_adm_changes_the_langevin_result_and_off_is_the_official_step():
    p = gaussian_problem("sr4", size=32)
    kw = dict(annealing_steps=4, ode_steps=2, mcmc_steps=6)
    plain = run(p, "daps", "sr4", **kw)[0]
    with_adm = run(p, "daps", "sr4", adm=True, **kw)[0]
    assert (plain - with_adm).abs().max() > 1e-3
    assert torch.equal(plain, run(p, "daps", "sr4", adm=False, adm_beta=0.5, **kw)[0])  # beta inert when off
