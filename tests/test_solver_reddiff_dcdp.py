"""RED-diff (solvers/reddiff.py) and DCDP (solvers/dcdp.py) on the exact Gaussian prior.

Accuracy quantity: ratio = ||x_hat - E[x | y]|| / s with s the RMS distance of exact posterior
samples to E[x | y] (see tests/test_solver_spgd.py, whose problem builder is reused): an exact
sampler scores about 1, the posterior mean 0. Bounds are the measured ratios (seed 0, 64x64,
sigma_y = 0.05) plus about 20 %.
"""
from __future__ import annotations

import pytest
import torch

import solvers
import operators
from solvers.dcdp import ddim_indices, gram_norm, purification_start, purification_times, size_scaled_lr
from solvers.reddiff import time_grid
from test_solver_spgd import TABLE1, gaussian_problem, prior_of_size, run

# ------------------------------------------------------------------------------------- RED-diff
# num_steps 200 (skip 5 on the 1000-step grid: the same algorithm on a coarser grid, for test time)
# measured ratios: inpaint 1.089, gaussian 0.926, motion 1.212, sr4 0.846 (A^T y: 3.07, 1.32, 2.12, 2.96)
REDDIFF_BOUND = {"inpaint_random": 1.3, "deblur_gaussian": 1.15, "deblur_motion": 1.45, "sr4": 1.05}


@pytest.mark.parametrize("task", TABLE1)
def test_reddiff_beats_adjoint_and_stays_near_posterior_mean(task):
    p = gaussian_problem(task)
    x, solver = run(p, "reddiff", task, num_steps=200)
    assert solver.budget() == {"nfe_forward": 200, "nfe_backward": 0}
    ratio, trivial = p.ratio(x), p.ratio(p.A.adjoint(p.y))
    assert ratio < trivial, (ratio, trivial)
    assert ratio < REDDIFF_BOUND[task], ratio


def test_reddiff_full_budget_and_time_grid():
    assert time_grid(1000) == list(range(999, -1, -1))
    assert time_grid(10) == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    solver = solvers.get("reddiff", prior_of_size(32), task="inpaint_random")  # paper default: 1000 steps
    assert solver.budget() == {"nfe_forward": 1000, "nfe_backward": 0}  # no backprop through the network
    # (counted NFE = budget() is checked by every `run` here, at 200 steps, and in test_solvers_common)


def test_reddiff_returns_the_estimate_before_the_last_adam_step():
    p = gaussian_problem("sr4", size=32)
    x, _ = run(p, "reddiff", "sr4", num_steps=1)  # one step: the output is the initialisation A^+ y
    assert torch.allclose(x, p.A.pinv(p.y).clamp(-1, 1))


def test_adam_first_step_is_a_sign_step_and_moments_are_per_element():
    from solvers.reddiff import Adam
    x = torch.zeros(2, 3, 4, 4)
    g = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    adam = Adam(0.1, betas=(0.9, 0.99))
    x1 = adam.step(x, g)  # m_hat = g, v_hat = g^2: x - lr g / (|g| + eps)
    assert torch.allclose(x1, -0.1 * g / (g.abs() + 1e-8))
    x2 = adam.step(x1, 2 * g)  # second step, bias-corrected moments in closed form
    m = (0.9 * 0.1 * g + 0.1 * 2 * g) / (1 - 0.9**2)
    v = (0.99 * 0.01 * g**2 + 0.01 * 4 * g**2) / (1 - 0.99**2)
    assert torch.allclose(x2, x1 - 0.1 * m / (v.sqrt() + 1e-8), atol=1e-6)


def test_reddiff_configs():
    prior = prior_of_size(32)
    s = solvers.get("reddiff", prior, task="deblur_gaussian")
    assert (s.num_steps, s.lam, s.lr, s.denoise_term_weight) == (1000, 0.25, 0.1, "linear")


# ------------------------------------------------------------------------------------- DCDP
def test_purification_schedule_and_ddim_indices():
    assert purification_times(10, 400, 0) == [400, 356, 311, 267, 222, 178, 133, 89, 44, 1]  # spec §5.1
    assert ddim_indices(400, 20) == list(range(399, -1, -21))
    assert ddim_indices(5, 20) == [4, 3, 2, 1, 0]
    assert ddim_indices(1, 20) == [1, 0]
    prior = prior_of_size(32)
    v1 = solvers.get("dcdp", prior, task="sr4")
    assert v1.budget(sigma_y=0.0) == {"nfe_forward": 9 * 20 + 2, "nfe_backward": 0}  # noiseless: 400 -> 0
    assert v1.budget() == {"nfe_forward": 10 * 20, "nfe_backward": 0}  # before a solve: noisy, 400 -> 50
    assert solvers.get("dcdp", prior, task="sr4", version=2).budget() == {"nfe_forward": 10, "nfe_backward": 0}
    assert solvers.get("dcdp", prior, task="inpaint_box", version=2).budget()["nfe_forward"] == 20


# DCDP runs with its configs as is: the solver rescales lr to 64 x 64 and, sigma_y being 0.05, uses the
# noisy recipe (t_end_noisy 50, deblurring lr x 0.1).
# measured ratios: v1: inpaint 1.668, gaussian 1.093, motion 1.201, sr4 1.078;
#                  v2: inpaint 1.334, gaussian 0.922, motion 1.038, sr4 0.912
DCDP_BOUND = {1: {"inpaint_random": 2.0, "deblur_gaussian": 1.3, "deblur_motion": 1.45, "sr4": 1.3},
              2: {"inpaint_random": 1.6, "deblur_gaussian": 1.1, "deblur_motion": 1.25, "sr4": 1.1}}


# inpaint_random v1 (20 rounds, 400 NFE) is left to `bench run --protocol demo` to keep this file fast
DCDP_CASES = [(task, version) for version in (1, 2) for task in TABLE1 if (task, version) != ("inpaint_random", 1)]


@pytest.mark.parametrize("task,version", DCDP_CASES)
def test_dcdp_beats_adjoint_and_stays_near_posterior_mean(task, version):
    p = gaussian_problem(task)
    x, solver = run(p, "dcdp", task, version=version)  # lr size scaling and noisy recipe: in the solver
    if version == 2:
        assert solver.budget()["nfe_forward"] == solver.rounds  # one Tweedie step per round
    ratio, trivial = p.ratio(x), p.ratio(p.A.adjoint(p.y))
    assert ratio < trivial, (ratio, trivial)
    assert ratio < DCDP_BOUND[version][task], ratio


def test_dcdp_version1_runs_the_full_20_step_schedule():
    p = gaussian_problem("sr4", size=32)
    _, solver = run(p, "dcdp", "sr4", dc_steps=10)
    assert solver.budget() == {"nfe_forward": 10 * 20, "nfe_backward": 0}  # t_end 50: every round 20 steps


def test_dcdp_lr_is_the_256px_value_rescaled_to_the_image_size():
    """lr x H W / 256^2 (the code's MSE-mean lr is for 256 x 256): the same physical step 2 lr ||A||^2 / m
    (Gaussian blur: 1.02 at 256 x 256, spec §5.2) at every size; noisy y: x lr_scale_noisy."""
    assert size_scaled_lr(1e5, (3, 256, 256), 256) == 1e5
    steps = {}
    for size in (32, 64):
        solver = solvers.get("dcdp", prior_of_size(size), task="deblur_gaussian")
        for sigma_y in (0.0, 0.05):
            A = operators.get("deblur_gaussian", image_shape=(3, size, size), seeds=[0], sigma_y=sigma_y)
            y = A(torch.zeros(1, 3, size, size))
            lr = solver.dc_learning_rate(y, A).flatten()
            expected = 1e5 * size**2 / 256**2 * (0.1 if sigma_y else 1.0)
            assert torch.allclose(lr, torch.tensor([expected]), rtol=1e-6), (size, sigma_y, lr)
            steps[size, sigma_y] = float(2 * lr * gram_norm(A, torch.zeros(1, 3, size, size)) / y[0].numel())
    for size in (32, 64):  # ||A||^2 = 1 up to the reflect-padded borders (+3 % at 32 x 32)
        assert steps[size, 0.0] == pytest.approx(1.017, rel=0.04)
        assert steps[size, 0.05] == pytest.approx(0.1 * steps[size, 0.0])


def test_dcdp_step_is_capped_at_half_the_heavy_ball_stability_limit():
    """Heavy ball on L = ||y - A x||^2 / m diverges iff lr h >= 2 (1 + beta), h = 2 ||A||^2 / m: any
    configured lr is capped at half that; at twice the cap (1.1 x the limit) the loop diverges."""
    size = 32
    solver = solvers.get("dcdp", prior_of_size(size), task="deblur_motion", lr=1e12)
    A = operators.get("deblur_motion", image_shape=(3, size, size), seeds=[0], sigma_y=0.05)
    x_true = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = A(x_true)
    lr = solver.dc_learning_rate(y, A)
    lam = gram_norm(A, x_true, iters=200)  # ||A||^2 = 1.14 here; the solver's 20 iterations: within 1 %
    assert float(lr) == pytest.approx(1.9 * y.numel() / (2 * float(lam)), rel=0.02)
    x0 = torch.zeros_like(x_true)

    def residual(step):
        try:
            return float((y - A(solver._data_consistency(x0, y, A, step))).norm())
        except solvers.SolverDiverged:
            return float("inf")

    assert residual(lr) < 0.2 * float(y.norm())
    assert residual(2.2 * lr) > 1e6 * float(y.norm())


def test_dcdp_noisy_recipe_is_selected_iff_sigma_y_is_positive():
    size = 32
    motion = solvers.get("dcdp", prior_of_size(size), task="deblur_motion")
    assert (motion.t_end, motion.t_end_noisy, motion.lr_scale_noisy) == (0, 50, 0.1)
    p = gaussian_problem("sr4", size=size)
    solver = solvers.get("dcdp", p.prior, task="sr4", rounds=3, dc_steps=2, ddim_steps=3)
    assert solver.schedule(0.0) == [400, 200, 1] and solver.schedule(1e-3) == [400, 225, 50]
    assert solver.noisy(1e-6) and not solver.noisy(0.0)
    for sigma_y in (0.0, 0.05):  # budget() after a solve = the counted NFE of that solve's noise case
        A = operators.get("sr4", image_shape=(3, size, size), seeds=[0], sigma_y=sigma_y)
        solver.solve(p.y, A, p.generators())
        assert solver.budget() == solver.budget(sigma_y) == p.prior.nfe.as_dict()
        assert solver.budget()["nfe_forward"] == (3 + 3 + 3 if sigma_y else 3 + 3 + 2)


def test_dcdp_last_round_noises_at_index_0_and_denoises_at_index_1_in_both_versions(monkeypatch):
    """Official rule (`ddim_timestep == 1 -> 2` before the version branch, issue 13): t = 1 adds noise at index
    0 and denoises from index 1; every other round denoises where it added the noise (t - 1)."""
    assert [purification_start(t) for t in (1, 2, 3, 400)] == [1, 1, 2, 399]
    assert all(ddim_indices(t, 20)[0] == purification_start(t) for t in (1, 2, 5, 44, 400))  # version 1 agrees
    size = 32
    p = gaussian_problem("sr4", size=size)
    A = operators.get("sr4", image_shape=(3, size, size), seeds=[0], sigma_y=0.0)  # noiseless: schedule ends at 1
    for version, expected in ((2, [399, 199, 1]), (1, [399, 199, 1])):
        solver = solvers.get("dcdp", p.prior, task="sr4", rounds=3, dc_steps=2, ddim_steps=3, version=version)
        assert solver.schedule(0.0) == [400, 200, 1]
        noised, denoised = [], []
        abar = solver._abar
        monkeypatch.setattr(solver, "_abar", lambda k: noised.append(k) or abar(k), raising=False)
        tweedie = solver._tweedie
        monkeypatch.setattr(solver, "_tweedie", lambda x, k: denoised.append(k) or tweedie(x, k), raising=False)
        monkeypatch.setattr(solver, "_ddim", lambda x, idx: denoised.append(idx[0]) or tweedie(x, idx[-1]),
                            raising=False)
        solver.solve(p.y, A, p.generators())
        assert noised == [399, 199, 0]  # noise at t - 1: the last round at index 0
        assert denoised == expected, (version, denoised)
