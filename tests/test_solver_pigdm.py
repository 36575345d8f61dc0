"""PiGDM: pieces by hand (spec solvers-more.md §2), the guided score against its closed form, whole samplers on
exact Gaussian priors.

Closed form: for the white prior N(0, I) and A = I (task `denoise`), x0 | x_k is exactly N(sqrt(abar) x_k,
(1 - abar) I), so the PiGDM likelihood p(y | x_k) = N(sqrt(abar) x_k, (1 - abar + sigma_y^2) I) is exact and its
score is sqrt(abar) (y - sqrt(abar) x_k) / (1 - abar + sigma_y^2); the posterior is N(y / (1 + sigma_y^2),
sigma_y^2 / (1 + sigma_y^2) I) per pixel. The whole sampler is checked on it through the standardised residual
(x - E[x|y]) / std[x|y] pooled over the pixels of each image, with the bounds stated at the test.
On the embedded (coloured) prior at 3x32x32 the mean of K = 4 samples must beat A^T y and stay below 1.5x the
distance to E[x|y] measured when the test was written, as for DDRM/DDNM.
"""
from __future__ import annotations

import math

import pytest
import torch

import operators
import solvers
from priors.gaussian import GaussianPrior, embedded
from solvers.base import RNG, SolverError, UnsupportedTask
from solvers.pigdm import ddim_coefficients, guidance_coefficient, noisy_guidance, pigdm_timesteps

SIGMA_Y = 0.05


def _gens(offset: int, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).flatten(1).mean(1).sqrt()


@pytest.fixture(scope="module")
def white():
    return GaussianPrior(image_shape=(3, 16, 16), colour_cov=torch.eye(3), gamma=0.0)


@pytest.fixture(scope="module")
def white_case(white):
    A = operators.get("denoise", image_shape=(3, 16, 16), seeds=[0, 1], sigma_y=SIGMA_Y)
    x = white.sample(2, _gens(0, 2))
    return A, A.measure(x, _gens(10, 2))


# ------------------------------------------------------------------------------ pieces
def test_grid_and_coefficients_by_hand():
    assert pigdm_timesteps(100) == list(range(990, -1, -10))  # RED-diff grid (spec §2.2)
    ak, as_ = 0.3, 0.5
    c1, c2 = ddim_coefficients(ak, as_, 1.0)
    assert c1 == pytest.approx(math.sqrt((1 - ak / as_) * (1 - as_) / (1 - ak)))
    assert c2 == pytest.approx(math.sqrt(1 - as_ - c1**2))
    assert ddim_coefficients(ak, 1.0, 1.0) == (0.0, 0.0)  # last step: no noise, no eps
    for variant in ("released", "paper"):  # RED-diff awd=True step weight
        assert guidance_coefficient(variant, ak, as_, c2) == pytest.approx(math.sqrt(as_ * ak))
    # tweedie, eta = 1: the DDPM weight of a score, beta' sqrt(abar_s / abar_k)
    assert guidance_coefficient("tweedie", ak, as_, c2) == pytest.approx((1 - ak / as_) * math.sqrt(as_ / ak))
    # last step: the full conditional Tweedie shift sigma_k^2 sqrt(abar_k)
    assert guidance_coefficient("tweedie", ak, 1.0, 0.0) == pytest.approx((1 - ak) / math.sqrt(ak))


def test_guidance_is_the_exact_score_on_the_white_prior(white, white_case):
    """J^T w = the closed-form likelihood score ("tweedie"), and r_k^2 times it ("paper")."""
    A, y = white_case
    for k in (900, 400, 30):
        abar = float(white.schedule.abar(k))
        x = torch.randn(y.shape, generator=torch.Generator().manual_seed(k)).requires_grad_(True)
        x0 = white.x0(x, k)
        exact = math.sqrt(abar) * (y - math.sqrt(abar) * x.detach()) / (1 - abar + SIGMA_Y**2)
        for scale_by_r2, factor in ((False, 1.0), (True, 1 - abar)):
            w = noisy_guidance(y, A, scale_by_r2)(x0.detach(), 1 - abar)
            (g,) = torch.autograd.grad((w * x0).sum(), x, retain_graph=True)
            assert torch.allclose(g, factor * exact, rtol=1e-4, atol=1e-5 * float(exact.abs().max())), (k, factor)


def test_paper_guidance_svd_form_matches_dense_solve():
    """w = A^T (r^2 A A^T + sigma_y^2 I)^-1 r on SR x4 at 3x8x8, against a dense matrix solve (float64)."""
    A = operators.get("sr4", image_shape=(3, 8, 8), sigma_y=0.1, svd_threshold=0.0)
    x0 = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.randn(1, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    M = torch.stack([A(e.view(1, 3, 8, 8)).flatten() for e in torch.eye(192, dtype=torch.float64)], 1)  # (12, 192)
    r2 = 0.3
    dense = M.T @ torch.linalg.solve(r2 * M @ M.T + 0.01 * torch.eye(12, dtype=torch.float64), (y - A(x0)).flatten())
    assert torch.allclose(noisy_guidance(y, A, False)(x0, r2).flatten(), dense, atol=1e-10)
    assert torch.allclose(noisy_guidance(y, A, True)(x0, r2).flatten(), r2 * dense, atol=1e-10)


def test_paper_equals_released_without_noise():
    """sigma_y = 0: r^2 A^T (r^2 A A^T)^-1 = A^+, so the two forms coincide (no mask paste on SR)."""
    prior = embedded(image_size=32)
    A = operators.get("sr4", image_shape=(3, 32, 32), seeds=[0], sigma_y=0.0)
    y = A.measure(prior.sample(1, _gens(0, 1)))
    out = [solvers.get("pigdm", prior, task="sr4", num_steps=10, variant=v).solve(y, A, _gens(5, 1))
           for v in ("paper", "released")]
    assert torch.allclose(*out, atol=1e-5)


def test_per_task_form_is_recorded_and_paper_needs_an_svd():
    prior = embedded(image_size=32)
    for task in ("inpaint_random", "inpaint_box", "deblur_gaussian", "sr4", "denoise"):
        assert solvers.get("pigdm", prior, task=task).variant == "paper"
    motion = solvers.get("pigdm", prior, task="deblur_motion")
    assert motion.variant == "released" and "fallback" in motion.sources["variant"]
    A = operators.get("deblur_motion", image_shape=(3, 32, 32), seeds=[0], sigma_y=SIGMA_Y)
    assert motion.supports(A)
    for variant in ("paper", "tweedie"):
        refused = solvers.get("pigdm", prior, task="deblur_motion", variant=variant)
        assert not refused.supports(A)
        with pytest.raises(UnsupportedTask):
            refused.solve(torch.zeros(1, 3, 32, 32), A)
    with pytest.raises(SolverError, match="variant must be one of paper, tweedie, released"):
        solvers.get("pigdm", prior, variant="code")
    hdr = operators.get("hdr", image_shape=(3, 32, 32))
    assert not solvers.get("pigdm", prior, task="hdr").supports(hdr)


# ------------------------------------------------------------------------------ whole samplers
# standardised-residual std window per variant at 100 steps, eta = 1 (measured when written: tweedie 0.68 / 0.70,
# and 0.83 at 250 steps, 0.97 at 1000: it converges to the exact posterior; paper 0.47 / 0.47; released 0.05 / 0.05,
# i.e. it collapses onto E[x|y])
STD_WINDOWS = {"tweedie": (0.6, 0.8), "paper": (0.4, 0.55), "released": (0.0, 0.1)}


def test_whole_sampler_on_white_denoising_vs_closed_form(white, white_case):
    """Standardised residual (x - E[x|y]) / std[x|y] per image: mean within 0.05 of 0 (centred on E[x|y]) for every
    variant; its std inside the window of STD_WINDOWS (1 = exact posterior samples)."""
    A, y = white_case
    mean, std = y / (1 + SIGMA_Y**2), SIGMA_Y / math.sqrt(1 + SIGMA_Y**2)
    stats = {}
    for variant in STD_WINDOWS:
        solver = solvers.get("pigdm", white, task="denoise", variant=variant)
        white.reset_counters()
        out = solver._solve(y, A, RNG(_gens(5, 2), 2)).detach()  # unclamped: the white prior leaves [-1, 1]
        assert white.nfe.as_dict() == {"nfe_forward": 200, "nfe_backward": 200}
        r = ((out - mean) / std).flatten(1)
        stats[variant] = (r.mean(1), r.std(1))
    for variant, (low, high) in STD_WINDOWS.items():
        m, s = stats[variant]
        assert (m.abs() < 0.05).all() and ((s > low) & (s < high)).all(), (variant, stats[variant])


# measured K-mean RMS distance to E[x|y] (max over the 2 images) when the test was written -> bound = 1.5x:
# inpaint_random 0.148, sr4 0.155, deblur_gaussian 0.169
BOUNDS = {"inpaint_random": 0.23, "sr4": 0.24, "deblur_gaussian": 0.26}


@pytest.mark.parametrize("task", sorted(BOUNDS))
def test_mean_close_to_exact_posterior_mean(task):
    prior = embedded(image_size=32)
    B, K = 2, 4
    A = operators.get(task, image_shape=(3, 32, 32), seeds=list(range(B)), sigma_y=SIGMA_Y)
    y = A.measure(prior.sample(B, _gens(0, B)), _gens(10, B))
    pm = prior.posterior_mean(y, A, tol=1e-4)
    idx = [i for i in range(B) for _ in range(K)]
    solver = solvers.get("pigdm", prior, task=task, dataset="ffhq")
    out = solver.solve(y[idx], A.select(idx), _gens(200, B * K))
    assert prior.nfe.as_dict() == {"nfe_forward": 100 * B * K, "nfe_backward": 100 * B * K}
    err = _rms(out.view(B, K, *out.shape[1:]).mean(1), pm)
    trivial = _rms(A.adjoint(y), pm)
    print(f"pigdm {task}: K-mean RMS to E[x|y] {err.tolist()}, A^T y {trivial.tolist()}")
    assert (err < trivial).all()
    assert (err < BOUNDS[task]).all()


def test_released_inpainting_pastes_the_measurement():
    """RED-diff `in2`: x0_hat <- (1 - m) x0_hat + m y and g <- (1 - m) g, so the output equals y on observed pixels."""
    prior = embedded(image_size=32)
    A = operators.get("inpaint_random", image_shape=(3, 32, 32), seeds=[0, 1], sigma_y=SIGMA_Y)
    y = A.measure(prior.sample(2, _gens(0, 2)), _gens(10, 2))
    out = solvers.get("pigdm", prior, task="inpaint_random", variant="released", num_steps=10).solve(y, A, _gens(5, 2))
    m = A.mask.to(out.dtype)
    assert (m * (out - y.clamp(-1, 1))).abs().max() < 1e-6
    assert ((1 - m) * (out - y)).abs().max() > 0.1


def test_observer_sees_each_guidance_step_and_changes_nothing():
    prior = embedded(image_size=32)
    A = operators.get("sr4", image_shape=(3, 32, 32), seeds=[0], sigma_y=SIGMA_Y)
    y = A.measure(prior.sample(1, _gens(0, 1)), _gens(10, 1))
    solver = solvers.get("pigdm", prior, task="sr4", num_steps=10)
    plain = solver.solve(y, A, _gens(5, 1))
    events = []
    solver.add_observer(lambda event, **q: events.append((event, q)))
    watched = solver.solve(y, A, _gens(5, 1))
    assert torch.equal(plain, watched) and prior.nfe.as_dict() == {"nfe_forward": 10, "nfe_backward": 10}
    assert [q["k"] for _, q in events] == pigdm_timesteps(10) and {e for e, _ in events} == {"likelihood_step"}
    q = events[-1][1]
    assert q["grad"].shape == q["x"].shape == q["prior_direction"].shape == (1, 3, 32, 32) and q["lr"] > 0
