"""DDRM and DiffPIR: pieces against the spec, whole samplers against the exact Gaussian posterior.

Reference: the embedded exact Gaussian prior (priors/gaussian.py) at 3x32x32, whose posterior mean E[x|y]
is exact (CG to 1e-5). DDRM and DiffPIR are samplers, so the checked quantity is the RMS distance to E[x|y]
of the mean of K = 6 samples per measurement (2 measurements per task, sigma_y = 0.05): it must beat the
trivial estimate A^T y and stay below a per-(solver, task) bound. Bounds are 1.5x the values measured when
writing these tests (seeds fixed below), rounded up; with K samples the mean carries a sampling error of
about spread / sqrt(K) = 0.1 besides the sampler's bias (DDRM / DiffPIR approximate the posterior with 20
steps; the exact-posterior K-mean sits at 0.07-0.12 for K = 6).
"""
from __future__ import annotations

import math

import pytest
import torch

import operators
import solvers
from priors.gaussian import embedded
from solvers.base import UnsupportedTask
from solvers.ddrm import ddrm_timesteps, initial_spectral_sample, spectral_step, zeroed_components
from solvers.diffpir import diffpir_noise_level, noise_level_index, quad_timesteps, released_start

B, K, K_MOTION, SIZE, SIGMA_Y = 2, 6, 2, 32, 0.05

# measured K-mean RMS distance to E[x|y] (max over the 2 images) when the tests were written -> bound = 1.5x
BOUNDS = {  # measured: ddrm 0.294 / 0.129 / 0.122, diffpir 0.216 / 0.151 / 0.206 (K = 2) / 0.132
    ("ddrm", "inpaint_random"): 0.45, ("ddrm", "deblur_gaussian"): 0.20, ("ddrm", "sr4"): 0.19,
    ("diffpir", "inpaint_random"): 0.33, ("diffpir", "deblur_gaussian"): 0.23,
    ("diffpir", "deblur_motion"): 0.31, ("diffpir", "sr4"): 0.20,
}


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).flatten(1).mean(1).sqrt()


@pytest.fixture(scope="module")
def prior():
    return embedded(image_size=SIZE)


@pytest.fixture(scope="module")
def cases(prior):
    """task -> (A, y, exact posterior mean) for B images drawn from the prior."""
    torch.manual_seed(0)
    x = prior.sample(B, [torch.Generator().manual_seed(i) for i in range(B)])
    out = {}
    for task in ("inpaint_random", "deblur_gaussian", "deblur_motion", "sr4"):
        A = operators.get(task, image_shape=(3, SIZE, SIZE), seeds=list(range(B)), sigma_y=SIGMA_Y)
        y = A.measure(x, [torch.Generator().manual_seed(10 + i) for i in range(B)])
        out[task] = (A, y, prior.posterior_mean(y, A, tol=1e-4))
    return out


# ------------------------------------------------------------------------------ pieces
def test_ddrm_timesteps_match_official_grid():
    assert ddrm_timesteps(20) == list(range(950, -1, -50))  # spec §4.2: 950 -> ... -> 0, then -1
    assert ddrm_timesteps(5) == [800, 600, 400, 200, 0]


def test_diffpir_quad_timesteps_match_spec():
    assert quad_timesteps(20) == [999, 770, 675, 602, 541, 487, 438, 393, 351, 311, 274, 239, 205, 172,
                                  141, 111, 82, 54, 26, 0]  # spec §5.1 [check]


def test_noise_conversions():
    assert diffpir_noise_level(0.05) == pytest.approx(0.025)  # DiffPIR sigma_n is a [0, 1] std (spec §0.1)
    assert diffpir_noise_level(0.0) == 0.001  # official floor


def test_ddrm_spectral_step_three_cases():
    """Spec §4.3 by hand: s = 0 (missing), s sigma' < sigma_y (less noisy), s sigma' > sigma_y (noisier)."""
    s = torch.tensor([[0.0, 0.5, 4.0, 1.0]])
    x0, eps, yb = torch.tensor([[0.3, -0.2, 0.7, 0.1]]), torch.tensor([[1.0, -1.0, 0.5, 2.0]]), \
        torch.tensor([[9.9, 0.4, 2.0, 0.5]])
    z = torch.tensor([[0.5, -0.5, 1.5, 0.25]])
    sig, sy, eta, eta_b = 0.1, 0.2, 0.85, 0.7  # s*sig = 0, 0.05, 0.4, 0.1 -> missing, less, noisier, less
    out = spectral_step(x0, eps, yb, s, sig, sy, eta, eta_b, z)[0]
    c = sig * math.sqrt(1 - eta**2)
    expected = [
        0.3 + c * 1.0 + eta * sig * 0.5,
        -0.2 + c * (0.4 - 0.5 * -0.2) / sy + eta * sig * -0.5,
        eta_b * 2.0 / 4.0 + (1 - eta_b) * 0.7 + math.sqrt(sig**2 - eta_b**2 * sy**2 / 16) * 1.5,
        0.1 + c * (0.5 - 1.0 * 0.1) / sy + eta * sig * 0.25,
    ]
    assert out.tolist() == pytest.approx(expected, rel=1e-6)
    tie = spectral_step(x0, eps, yb, torch.tensor([[0.0, 2.0, 2.0, 2.0]]), 0.1, 0.2, eta, eta_b, z)[0]
    assert tie[1].item() == pytest.approx(-0.2 + c * -1.0 + eta * 0.1 * -0.5, rel=1e-6)  # s sigma' = sigma_y


def test_ddrm_initial_sample():
    s, yb, z = torch.tensor([[0.0, 0.01, 2.0]]), torch.tensor([[5.0, 5.0, 1.0]]), torch.tensor([[1.0, -1.0, 0.5]])
    out = initial_spectral_sample(yb, s, sigma=3.0, sigma_y=0.1, z=z)[0]
    assert out.tolist() == pytest.approx([3.0, -3.0, 0.5 + math.sqrt(9 - 0.01 / 4) * 0.5], rel=1e-6)


def test_ddrm_refuses_motion_blur(prior, cases):
    A, y, _ = cases["deblur_motion"]
    solver = solvers.get("ddrm", prior, task="deblur_motion")
    assert not solver.supports(A)
    with pytest.raises(UnsupportedTask):
        solver.solve(y, A)


# ------------------------------------------------------------------------------ whole samplers
@pytest.mark.parametrize("name,task", sorted(BOUNDS))
def test_sampler_mean_close_to_exact_posterior_mean(prior, cases, name, task):
    A, y, pm = cases[task]
    k = K_MOTION if task == "deblur_motion" else K  # motion blur: CG data steps, fewer samples for speed
    idx = [i for i in range(B) for _ in range(k)]
    solver = solvers.get(name, prior, task=task, dataset="ffhq")
    out = solver.solve(y[idx], A.select(idx), [torch.Generator().manual_seed(100 + j) for j in range(B * k)])
    assert torch.isfinite(out).all()
    assert prior.nfe.as_dict() == {"nfe_forward": solver.budget()["nfe_forward"] * B * k, "nfe_backward": 0}
    assert solver.budget() == {"nfe_forward": 20, "nfe_backward": 0}
    err = _rms(out.view(B, k, *out.shape[1:]).mean(1), pm)
    trivial = _rms(A.adjoint(y), pm)
    print(f"{name} {task}: K-mean RMS to E[x|y] {err.tolist()}, A^T y {trivial.tolist()}")
    assert (err < trivial).all()
    assert (err < BOUNDS[(name, task)]).all()


# ------------------------------------------------------------------------------ DDRM variant "released" (issue 13)
def test_ddrm_zeroed_components_are_the_thresholded_blur_values():
    """Released DDRM's zeros below m: a blur's 2-D values S_r[a] S_c[b] with a 1-D factor under 3e-2, i.e.
    3 (H^2 - k^2) of them for k 1-D values kept (issue 13: 11,316 of 12,288 at 64x64)."""
    for size, count in ((64, 11316), (32, 2829)):
        A = operators.get("deblur_gaussian", image_shape=(3, size, size), seeds=[0])
        kept_1d = int((torch.linalg.svdvals(A.rows) >= 3e-2).sum())
        s = A.svd.singulars(1)
        zeroed = zeroed_components(A.svd, s)
        assert int(zeroed.sum()) == 3 * (size**2 - kept_1d**2) == count
        assert torch.equal(zeroed, s == 0)  # a blur has m = n: every zero is a thresholded value
    for task in ("inpaint_random", "sr4", "denoise"):  # masks / identity: zeros are missing; SR: none below m
        A = operators.get(task, image_shape=(3, SIZE, SIZE), seeds=[0])
        s = A.svd.singulars(1)
        assert not zeroed_components(A.svd, s).any()
    assert (operators.get("inpaint_random", image_shape=(3, SIZE, SIZE), seeds=[0]).svd.singulars(1) == 0).any()


def test_ddrm_released_step_gives_zeroed_values_the_less_noisy_update():
    """By hand: a zeroed value (s = 0 flagged) takes x0 + sigma' sqrt(1 - eta^2) y_bar / sigma_y + eta sigma' z;
    an unflagged zero stays missing; nonzero values are unchanged; with sigma_y = 0 nothing is less noisy."""
    s = torch.tensor([[0.0, 0.0, 0.5, 4.0]])
    zeroed = torch.tensor([[True, False, False, False]])
    x0, eps, yb = torch.tensor([[0.3, -0.2, 0.7, 0.1]]), torch.tensor([[1.0, -1.0, 0.5, 2.0]]), \
        torch.tensor([[0.4, 9.9, 2.0, 0.5]])
    z = torch.tensor([[0.5, -0.5, 1.5, 0.25]])
    sig, sy, eta, eta_b = 0.1, 0.2, 0.85, 0.7
    c = sig * math.sqrt(1 - eta**2)
    paper = spectral_step(x0, eps, yb, s, sig, sy, eta, eta_b, z)[0]
    released = spectral_step(x0, eps, yb, s, sig, sy, eta, eta_b, z, zeroed)[0]
    assert paper[0].item() == pytest.approx(0.3 + c * 1.0 + eta * sig * 0.5, rel=1e-6)  # missing
    assert released[0].item() == pytest.approx(0.3 + c * 0.4 / sy + eta * sig * 0.5, rel=1e-6)  # less noisy
    assert torch.equal(released[1:], paper[1:])
    noiseless = spectral_step(x0, eps, yb, s, sig, 0.0, eta, eta_b, z, zeroed)
    torch.testing.assert_close(noiseless, spectral_step(x0, eps, yb, s, sig, 0.0, eta, eta_b, z))


def _ddrm_run(prior, A, y, variant, monkeypatch):
    """Output and the first spectral step's x_bar' of a 5-step DDRM run (fixed streams)."""
    import solvers.ddrm as ddrm_module
    steps: list[torch.Tensor] = []
    original = ddrm_module.spectral_step
    monkeypatch.setattr(ddrm_module, "spectral_step", lambda *a: steps.append(original(*a)) or steps[-1])
    out = solvers.get("ddrm", prior, task=A.name, num_steps=5, variant=variant).solve(
        y, A, [torch.Generator().manual_seed(7 + i) for i in range(y.shape[0])])
    monkeypatch.setattr(ddrm_module, "spectral_step", original)
    return out, steps[0]


def test_ddrm_variants_differ_exactly_on_the_zeroed_components(prior, cases, monkeypatch):
    """Gaussian deblur: same start, same network call, so the first step differs exactly on the zeroed
    components, and the outputs differ everywhere after; inpainting and SR (nothing zeroed): identical."""
    A, y, _ = cases["deblur_gaussian"]
    out_p, step_p = _ddrm_run(prior, A, y, "paper", monkeypatch)
    out_r, step_r = _ddrm_run(prior, A, y, "released", monkeypatch)
    zeroed = zeroed_components(A.svd, A.svd.singulars(y.shape[0]).to(y))
    assert torch.equal(step_p != step_r, zeroed)
    assert (out_p - out_r).abs().max() > 0.05
    for task in ("inpaint_random", "sr4"):
        A, y, _ = cases[task]
        assert torch.equal(_ddrm_run(prior, A, y, "paper", monkeypatch)[0],
                           _ddrm_run(prior, A, y, "released", monkeypatch)[0])


def test_ddrm_bad_variant_is_one_line(prior, cases):
    A, y, _ = cases["sr4"]
    with pytest.raises(solvers.SolverError, match="variant must be one of paper, released"):
        solvers.get("ddrm", prior, task="sr4", variant="official").solve(y, A)


# ------------------------------------------------------------------------------ DiffPIR init "released" (issue 13)
def test_diffpir_noise_level_index_matches_spec(prior):
    sch = prior.schedule
    assert noise_level_index(sch, 0.1) == 26 and noise_level_index(sch, 0.05) == 11  # spec §5.1 [check]
    assert noise_level_index(sch, 0.0) == 0


def _keys(t: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel (OpenCV INTER_CUBIC and torch bicubic use a = -0.75)."""
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0


def _keys_upsample_4(low: torch.Tensor) -> torch.Tensor:
    """x4 bicubic upsampling by hand, valid away from the border: output pixel j samples (j + 0.5) / 4 - 0.5."""
    n = low.shape[-1]
    W = torch.zeros(4 * n, n, dtype=torch.float64)
    for j in range(4 * n):
        p = (j + 0.5) / 4 - 0.5
        for i in range(math.floor(p) - 1, math.floor(p) + 3):
            if 0 <= i < n:
                W[j, i] = _keys(p - i)
    return W @ low @ W.T


def test_diffpir_released_start_by_hand(prior, cases):
    """Inpainting / deblur: c b + sqrt((1 - abar_999) - c^2 (1 - abar_ty)) z, c = sqrt(abar_999 / abar_ty),
    t_y = 11 (sigma_y 0.05), b = y with holes at -1; SR: sqrt(abar_999) bicubic-up(y) + sqrt(1 - abar_999) z."""
    sch = prior.schedule
    ab, ab_y = float(sch.abar(999)), float(sch.abar(11))
    c = math.sqrt(ab / ab_y)
    r = math.sqrt((1 - ab) - c**2 * (1 - ab_y))
    z = torch.randn(B, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    A, y, _ = cases["inpaint_random"]
    x = released_start(y, A, (3, SIZE, SIZE), sch, 999, z)
    hole = (A.mask == 0).expand_as(y)
    torch.testing.assert_close(x[hole], -c + r * z[hole])
    torch.testing.assert_close(x[~hole], c * y[~hole] + r * z[~hole])
    A, y, _ = cases["deblur_gaussian"]
    torch.testing.assert_close(released_start(y, A, (3, SIZE, SIZE), sch, 999, z), c * y + r * z)
    A, _, _ = cases["sr4"]
    flat = torch.full((B, 3, SIZE // 4, SIZE // 4), 0.3, dtype=torch.float64)  # bicubic keeps a constant
    torch.testing.assert_close(released_start(flat, A, (3, SIZE, SIZE), sch, 999, z),
                               math.sqrt(ab) * 0.3 + math.sqrt(1 - ab) * z)
    low = torch.randn(1, 1, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    up = released_start(low.expand(B, 3, -1, -1), A, (3, SIZE, SIZE), sch, 999, torch.zeros_like(z))[0, 0]
    inner = slice(6, 4 * (SIZE // 4) - 6)  # all 4 taps inside: p = (j + 0.5) / 4 - 0.5 in [1, SIZE / 4 - 2)
    torch.testing.assert_close(up[inner, inner] / math.sqrt(ab), _keys_upsample_4(low[0, 0])[inner, inner])
    with pytest.raises(solvers.SolverError, match="init 'released' is defined for inpainting"):
        released_start(torch.zeros(B, 3, 5, 7, dtype=torch.float64), A, (3, SIZE, SIZE), sch, 999, z)


def test_diffpir_init_switch(prior, cases):
    """The default start is the clipped A^+ y (unchanged); init: released changes the run's start, hence its
    output; unknown values are one-line errors."""
    A, y, _ = cases["deblur_gaussian"]
    run = lambda **kw: solvers.get("diffpir", prior, task="deblur_gaussian", num_steps=3, **kw).solve(  # noqa: E731
        y, A, [torch.Generator().manual_seed(5 + i) for i in range(B)])
    assert torch.equal(run(), run(init="pinv"))
    assert not torch.allclose(run(), run(init="released"))
    with pytest.raises(solvers.SolverError, match="init must be one of pinv, released"):
        run(init="official")
