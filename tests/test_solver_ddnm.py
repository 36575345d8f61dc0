"""DDNM / DDNM+: pieces against spec solvers-more.md §1 by hand, whole samplers on the exact Gaussian prior.

Exact-prior checks: noise-free DDNM keeps the measurement exactly (observed pixels of inpainting, A x = y for SR);
noisy DDNM+ is compared with the exact posterior mean E[x|y] of the embedded Gaussian prior at 3x32x32 (CG to
1e-4): the mean of K = 4 samples per measurement must beat the trivial estimate A^T y and stay below a
per-task bound, 1.5x the value measured when the test was written (seeds fixed), rounded up.
"""
from __future__ import annotations

import math

import pytest
import torch

import operators
import solvers
from priors.gaussian import embedded
from solvers.base import RNG, SolverError, UnsupportedTask
from solvers.ddnm import ddnm_pairs, ddnm_plus_rule, jump_schedule, unthresholded_singulars

B, K, SIZE, SIGMA_Y = 2, 4, 32, 0.05
# measured K-mean RMS distance to E[x|y] (max over the 2 images) when the test was written -> bound = 1.5x:
# inpaint_random 0.204, deblur_gaussian 0.166, sr4 0.143
BOUNDS = {"inpaint_random": 0.31, "deblur_gaussian": 0.25, "sr4": 0.22}


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).flatten(1).mean(1).sqrt()


def _gens(offset: int, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


@pytest.fixture(scope="module")
def prior():
    return embedded(image_size=SIZE)


@pytest.fixture(scope="module")
def images(prior):
    return prior.sample(B, _gens(0, B))


def _case(prior, images, task: str, sigma_y: float):
    A = operators.get(task, image_shape=(3, SIZE, SIZE), seeds=list(range(B)), sigma_y=sigma_y)
    return A, A.measure(images, _gens(10, B))


# ------------------------------------------------------------------------------ pieces
def test_grid_is_the_official_one():
    pairs = ddnm_pairs(100)
    assert [k for k, _ in pairs] == list(range(990, -1, -10)) and pairs[-1] == (0, -1)  # spec §1.1
    assert all(k_next < k for k, k_next in pairs)


def test_time_travel_schedule_matches_repaint_jumps():
    # get_schedule_jump(5, 1, 2) walked by hand: jump points {0, 1, 2, 3}, each revisited once
    assert jump_schedule(5, 1, 2) == [4, 3, 4, 3, 2, 3, 2, 1, 2, 1, 0, 1, 0, -1]
    assert jump_schedule(6, 2, 2) == [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]  # J = {0, 2}
    assert jump_schedule(6, 2, 2, travel_interval=4) == [5, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]  # J = {0}
    assert jump_schedule(100) == list(range(99, -2, -1))  # l = r = 1: no travel (official default)
    for (T, l, r), nfe in {(100, 1, 2): 199, (100, 10, 2): 190, (100, 10, 3): 280, (100, 1, 3): 298}.items():
        down = sum(1 for k, k_next in ddnm_pairs(T, l, r) if k_next < k)
        assert down == nfe == T + l * (r - 1) * math.ceil((T - l) / l)  # spec §1.5 [check] table and formula


def test_ddnm_plus_rule_four_cases():
    """Spec §1.3 by hand: s = 0, noisier (s sigma_t > a sigma_y), less noisy, exact tie."""
    s = torch.tensor([[0.0, 4.0, 0.5, 2.0]])
    a, sigma_t, sigma_y, eta = 0.8, 0.1, 0.25, 0.85  # a sigma_y = 0.2; s sigma_t = 0, 0.4, 0.05, 0.2
    lam, d1, d2 = ddnm_plus_rule(s, a, sigma_t, sigma_y, eta)
    c = math.sqrt(1 - eta**2)
    assert lam[0].tolist() == pytest.approx([1.0, 1.0, 0.5 * sigma_t * c / (a * sigma_y), 1.0], rel=1e-6)
    assert d1[0].tolist() == pytest.approx([eta * sigma_t, math.sqrt(sigma_t**2 - (a * sigma_y / 4.0) ** 2),
                                            eta * sigma_t, eta * sigma_t], rel=1e-6)
    assert d2[0].tolist() == pytest.approx([c * sigma_t, 0.0, 0.0, c * sigma_t], rel=1e-6)
    lam0, d10, d20 = ddnm_plus_rule(s, 1.0, 0.0, sigma_y, eta)  # last step: sigma_t = 0 -> no correction, no noise
    assert lam0[0, 1:].tolist() == [0.0, 0.0, 0.0] and d10.abs().max() == 0 and d20.abs().max() == 0


def test_unthresholded_singulars_in_the_thresholded_order():
    A = operators.get("deblur_gaussian", image_shape=(3, SIZE, SIZE), sigma_y=SIGMA_Y)
    kept = A.svd.singulars()
    raw = unthresholded_singulars(A)
    assert raw.shape == kept.shape
    assert torch.equal(raw[kept > 0], kept[kept > 0])  # same values where the threshold keeps them
    assert bool((raw[kept == 0] > 0).any()) and float(raw[kept == 0].max()) < 3e-2 * float(raw.max())


def test_bad_options_are_one_line_errors(prior):
    with pytest.raises(SolverError, match="variant must be one of paper, released"):
        solvers.get("ddnm", prior, variant="code")
    with pytest.raises(SolverError, match="travel_length.*must be >= 1"):
        solvers.get("ddnm", prior, travel_length=0)


# ------------------------------------------------------------------------------ noise-free DDNM
def test_noise_free_inpainting_keeps_observed_pixels(prior, images):
    A, y = _case(prior, images, "inpaint_random", 0.0)
    solver = solvers.get("ddnm", prior, task="inpaint_random", num_steps=20)
    out = solver.solve(y, A, _gens(100, B))
    m = A.mask.to(out.dtype)
    assert (m * (out - y.clamp(-1, 1))).abs().max() < 1e-6
    assert ((1 - m) * (out - y)).abs().max() > 0.1  # the holes are filled, not copied from y (zeros there)


def test_noise_free_sr_output_reproduces_the_measurement(prior, images):
    A, y = _case(prior, images, "sr4", 0.0)
    solver = solvers.get("ddnm", prior, task="sr4", num_steps=20, travel_length=2, travel_repeat=2)
    prior.reset_counters()
    out = solver._solve(y, A, RNG(_gens(100, B), B))  # before Solver.solve's clamp to [-1, 1]
    assert float(_rms(A(out), y).max()) < 1e-5 * float(_rms(y, torch.zeros_like(y)).min())
    assert prior.nfe.as_dict()["nfe_forward"] == solver.budget()["nfe_forward"] * B == 38 * B  # 20 + l (r-1) |J| = 2 * 1 * 9


def test_released_equals_paper_without_noise(prior, images):
    for task in ("inpaint_random", "deblur_gaussian", "sr4"):
        A, y = _case(prior, images, task, 0.0)
        outs = [solvers.get("ddnm", prior, task=task, num_steps=10, variant=v).solve(y, A, _gens(100, B))
                for v in ("paper", "released")]
        assert torch.equal(*outs), task


def test_released_rows_with_noise(prior, images):
    """Inpainting: same as paper; Gaussian deblur: differs (un-thresholded rule, no V^T on eps); SR: unsupported."""
    def run(task, variant):
        A, y = _case(prior, images, task, SIGMA_Y)
        return solvers.get("ddnm", prior, task=task, num_steps=10, variant=variant).solve(y, A, _gens(100, B))
    assert torch.equal(run("inpaint_random", "paper"), run("inpaint_random", "released"))
    assert float((run("deblur_gaussian", "paper") - run("deblur_gaussian", "released")).abs().max()) > 1e-2
    A, y = _case(prior, images, "sr4", SIGMA_Y)
    released = solvers.get("ddnm", prior, task="sr4", variant="released")
    assert not released.supports(A)
    with pytest.raises(UnsupportedTask):
        released.solve(y, A)


def test_motion_blur_is_unsupported(prior, images):
    A, y = _case(prior, images, "deblur_motion", SIGMA_Y)
    solver = solvers.get("ddnm", prior, task="deblur_motion")
    assert not solver.supports(A)
    with pytest.raises(UnsupportedTask):
        solver.solve(y, A)


# ------------------------------------------------------------------------------ DDNM+ against E[x|y]
@pytest.mark.parametrize("task", sorted(BOUNDS))
def test_ddnm_plus_mean_close_to_exact_posterior_mean(prior, images, task):
    A, y = _case(prior, images, task, SIGMA_Y)
    pm = prior.posterior_mean(y, A, tol=1e-4)
    idx = [i for i in range(B) for _ in range(K)]
    solver = solvers.get("ddnm", prior, task=task, dataset="ffhq")
    out = solver.solve(y[idx], A.select(idx), _gens(200, B * K))
    assert prior.nfe.as_dict() == {"nfe_forward": 100 * B * K, "nfe_backward": 0} and solver.budget()["nfe_forward"] == 100
    err = _rms(out.view(B, K, *out.shape[1:]).mean(1), pm)
    trivial = _rms(A.adjoint(y), pm)
    print(f"ddnm {task}: K-mean RMS to E[x|y] {err.tolist()}, A^T y {trivial.tolist()}")
    assert (err < trivial).all()
    assert (err < BOUNDS[task]).all()
