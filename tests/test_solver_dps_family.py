"""DPS, DPPS, MCG, Score-SDE and their shared DDPM mechanism (solvers/ddpm_steps.py).

Exact pieces: the respaced grid, the posterior coefficients and learned-range variance (against
`DiffusionPrior.log_variance` and the DDPM marginal identities), the DPPS candidate-count rule (spec seed
§4.3 values), candidate selection, the Score-SDE / MCG projection.

Accuracy on the exact Gaussian prior (3x32x32, sigma_y 0.05, 2 images per task): the quantity checked is
ratio = ||x_hat - E[x|y]||^2 / tr(Cov[x|y]), with tr(Cov) estimated from 4 exact posterior samples
(E||x_post - E[x|y]||^2 = tr Cov, so an exact posterior sample scores 1 on average; an MMSE estimator 0).
Each (solver, task) must
  (a) beat the trivial estimate: ||x_hat - mean||^2 < ||x_triv - mean||^2 + tr(Cov), x_triv the better of
      A^T y and A^+ y — i.e. be closer than the trivial estimate given a posterior-sized spread (a sampler
      cannot beat the trivial estimate itself where that is near-MMSE: the SR pinv is closer to the mean
      than exact posterior samples are). Exceptions, documented: MCG and Score-SDE on motion deblurring (the
      pinv and the projection are those of the circular model, operators/blur.py, which at 32x32 with a 61x61
      kernel differs from the reflect-padded operator over the whole image; image 0 misses the bound, image 1
      meets it). With the operator's own pinv (DDRM's 3e-2 truncation) both blurs missed it by far (the
      projection amplified the noise); the projection's A^+ is now truncated at `projection_threshold`;
  (b) stay within the per-(solver, task) ratio bound BOUNDS, about 1.5x the ratio measured at the budget
      below (measured values in the comment).
Budgets (reduced where the real 1000 steps do not fit the test-time budget): STEPS below; DPPS on motion
blur also runs with max_candidates 10 (the candidate evaluations of the 61x61 motion blur dominate).
"""
from __future__ import annotations

import functools
import math

import pytest
import torch

import operators
import solvers
from priors.gaussian import embedded
from solvers import ddpm_steps as dd
from solvers.dpps import candidate_count, select_candidate
from solvers.base import RNG

SHAPE = (3, 32, 32)
B = 2
SIGMA_Y = 0.05
TASKS = ("inpaint_random", "deblur_gaussian", "deblur_motion", "sr4")

# num_steps per (solver, task); the real default is 1000 for all four solvers.
STEPS = {("dps", "sr4"): 1000, ("dps", "deblur_motion"): 500}
DEFAULT_STEPS = 200
EXTRA = {("dpps", "deblur_motion"): {"max_candidates": 10}}
# ratio bounds (measured ratios per image in the comment)
BOUNDS = {
    ("dps", "inpaint_random"): 2.5,     # 1.67, 1.39 (200 steps); 0.91, 0.85 at 1000
    ("dps", "deblur_gaussian"): 3.0,    # 1.99, 1.65 (200 steps); 1.13, 1.11 at 1000
    ("dps", "deblur_motion"): 4.0,      # 2.79, 2.44 (500 steps); 2.12, 2.06 at 1000
    ("dps", "sr4"): 1.3,                # 0.86, 0.89 (1000 steps)
    ("dpps", "inpaint_random"): 1.7,    # 1.13, 0.97
    ("dpps", "deblur_gaussian"): 1.8,   # 1.19, 1.25
    ("dpps", "deblur_motion"): 4.0,     # 2.42, 2.72 (max_candidates 10)
    ("dpps", "sr4"): 1.2,               # 0.70, 0.80
    ("mcg", "inpaint_random"): 1.6,     # 1.00, 0.94; 0.86, 0.81 at 1000
    ("mcg", "deblur_gaussian"): 2.0,    # 1.34, 1.05 (projection_threshold 0.15; 3.57, 5.33 with the operator pinv)
    ("mcg", "deblur_motion"): 8.0,      # 5.17, 3.39 (circular-model projection; 15.76, 10.12 with the operator pinv)
    ("mcg", "sr4"): 1.1,                # 0.68, 0.69
    ("scoresde", "inpaint_random"): 3.6,  # 2.39, 2.21; 2.03, 2.64 at 1000
    ("scoresde", "deblur_gaussian"): 2.1,  # 1.42, 1.06 (3.57, 5.33 with the operator pinv)
    ("scoresde", "deblur_motion"): 8.7,  # 5.77, 3.63 (15.77, 10.13 with the operator pinv)
    ("scoresde", "sr4"): 1.1,           # 0.67, 0.69
}
WORSE_THAN_TRIVIAL = {(s, "deblur_motion") for s in ("mcg", "scoresde")}


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.lru_cache(maxsize=1)
def prior():
    return embedded(SHAPE[-1])


def gens(offset: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + i) for i in range(B)]


@functools.lru_cache(maxsize=None)
def problem(task: str) -> dict:
    """x, y, the operator, the exact posterior mean and tr(Cov) (4 exact samples), trivial error."""
    p = prior()
    A = operators.get(task, image_shape=SHAPE, seeds=list(range(B)), sigma_y=SIGMA_Y)
    x = p.sample(B, gens(10))
    y = A.measure(x, gens(100))
    mean = p.posterior_mean(y, A)
    sq = lambda v: ((v - mean).flatten(1) ** 2).sum(1)  # noqa: E731
    trace = torch.stack([sq(p.posterior_sample(y, A, gens(1000 * (j + 1)))) for j in range(4)]).mean(0)
    trivial = [sq(A.adjoint(y))]
    if dd.has_pinv(A):
        trivial.append(sq(A.pinv(y)))
    return {"A": A, "y": y, "mean": mean, "trace": trace, "trivial": torch.stack(trivial).min(0).values}


# ---------------------------------------------------------------------- the grid and the step
def test_timesteps_full_and_respaced():
    assert dd.timesteps(1000) == list(range(999, -1, -1))
    ks = dd.timesteps(20)
    assert len(ks) == 20 and ks[0] == 999 and ks[-1] == 0 and all(a > b for a, b in zip(ks, ks[1:]))
    assert ks[-2] == round(999 / 19)  # guided-diffusion space_timesteps: round(i * 999 / 19)
    with pytest.raises(ValueError, match="num_steps"):
        dd.timesteps(0)


@pytest.mark.parametrize("num_steps", [1000, 20, 7])
def test_step_coefficients_keep_the_ddpm_marginals(num_steps):
    """x_k = sqrt(abar_k) x0 + sqrt(1-abar_k) n and the step's posterior give x_k' with the right marginal:
    mean: c_x0 + c_xk sqrt(abar_k) = sqrt(abar_k'); variance: c_xk^2 (1 - abar_k) + beta~' = 1 - abar_k'."""
    steps = dd.ddpm_grid(prior().schedule, num_steps)
    assert [s.k for s in steps] == dd.timesteps(num_steps) and steps[-1].last and steps[-1].abar_prev == 1.0
    for s in steps:
        assert s.c_x0 + s.c_xk * math.sqrt(s.abar) == pytest.approx(math.sqrt(s.abar_prev), abs=1e-12)
        if not s.last:
            var = s.c_xk**2 * (1 - s.abar) + math.exp(s.log_var_min)
            assert var == pytest.approx(1 - s.abar_prev, rel=1e-10)


def test_full_grid_variance_equals_prior_log_variance():
    p = prior()
    steps = {s.k: s for s in dd.ddpm_grid(p.schedule, 1000)}
    like = torch.zeros(2, *SHAPE)
    v = torch.rand(like.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for k in (999, 500, 1, 0):
        for vv in (None, v):
            ours = dd.log_variance(steps[k], vv, like)
            assert torch.allclose(ours, p.log_variance(k, vv, like), rtol=0, atol=1e-5), (k, vv is None)


def test_dpps_candidate_counts_match_spec():
    steps = dd.ddpm_grid(prior().schedule, 1000)
    n = {s.k: candidate_count(s, 50) for s in steps}
    assert [n[k] for k in (999, 528, 527, 500, 400, 300, 200, 100, 0)] == [2, 2, 3, 4, 10, 23, 42, 49, 50]
    assert sum(n.values()) == 16255  # spec seed §4.3


def test_dpps_selects_the_closest_candidate_per_image():
    p = prior()
    prob = problem("inpaint_random")
    A, y = prob["A"], prob["y"]
    step = dd.ddpm_grid(p.schedule, 1000)[700]
    x_mean = torch.randn(B, *SHAPE, generator=torch.Generator().manual_seed(1))
    std = torch.full_like(x_mean, 0.3)
    eps = torch.randn(B, *SHAPE, generator=torch.Generator().manual_seed(2))
    n = 5
    chosen = select_candidate(x_mean, std, eps, y, A, step, n, RNG(gens(7), B))
    for i in range(B):  # redraw image i's n candidates from its own stream (one draw) and find the argmin by hand
        g = torch.Generator().manual_seed(7 + i)
        cands = x_mean[i] + std[i] * torch.randn((n, *SHAPE), generator=g)
        A_i = A.select([i] * n)
        delta = ((math.sqrt(step.abar_prev) * y[i] - A_i(cands - math.sqrt(1 - step.abar_prev) * eps[i]))
                 .flatten(1).norm(dim=1))
        assert torch.allclose(chosen[i], cands[delta.argmin()], atol=1e-6)


def test_projection_is_the_mask_replacement_and_idempotent():
    inp = problem("inpaint_random")
    A, y = inp["A"], inp["y"]
    x = torch.randn(B, *SHAPE, generator=torch.Generator().manual_seed(3))
    m = A(torch.ones_like(x))
    assert torch.allclose(dd.project_onto_measurement(x, y, A), (1 - m) * x + m * y, atol=1e-6)
    for task in ("sr4", "deblur_gaussian", "deblur_motion"):  # motion: the circular model (A.pinv_forward)
        A, y = problem(task)["A"], problem(task)["y"]
        for pinv in (None, dd.projection_pinv(A, 0.15)):  # the operator's pinv and the truncated one
            once = dd.project_onto_measurement(x, y, A, pinv)
            assert torch.allclose(dd.project_onto_measurement(once, y, A, pinv), once, atol=1e-4), task


def test_projection_pinv_keeps_masks_and_sr_exact():
    """Singular values 0/1 (mask) and 0.124..0.25 (bicubic x4: ratio 0.496) all survive a threshold 0.3."""
    for task in ("inpaint_random", "sr4"):
        A, y = problem(task)["A"], problem(task)["y"]
        assert torch.allclose(dd.projection_pinv(A, 0.3)(y), A.pinv(y), atol=1e-5), task


def test_projection_pinv_inverts_exactly_the_singular_values_above_the_threshold():
    """Gaussian blur (exact separable SVD): pinv_t(U e_i) = V e_i / s_i if s_i >= t max s, else 0 (2-D values)."""
    A, t = problem("deblur_gaussian")["A"], 0.15
    svd = A.svd_at(0.0)
    s = svd.singulars(B)[0]
    pinv = dd.projection_pinv(A, t)
    for i in {int(s.argmax()), int(s.argmin()), int((s - t * s.max()).abs().argmin())}:
        if i >= svd.m:
            continue
        u = torch.zeros(B, svd.m)
        u[:, i] = 1
        v = torch.zeros(B, svd.n)
        v[:, i] = 1 / s[i] if s[i] >= t * s.max() else 0
        assert torch.allclose(pinv(svd.U(u)), svd.V(v), atol=1e-4), (i, float(s[i]))
    with pytest.raises(ValueError, match="projection_threshold"):
        dd.projection_pinv(A, 0.0)


@pytest.mark.parametrize("task", ["deblur_gaussian", "deblur_motion"])
def test_projection_pinv_bounds_the_noise_gain(task):
    """||A_t^+ n|| <= ||n|| / t (largest singular value 1); the operator's own pinv amplifies far more."""
    A, t = problem(task)["A"], 0.15
    n = torch.randn(B, *SHAPE, generator=torch.Generator().manual_seed(5))
    norm = lambda v: v.flatten(1).norm(dim=1)  # noqa: E731
    for _ in range(20):  # repeated application concentrates n on the most amplified directions (gain -> ~1/t)
        n = dd.projection_pinv(A, t)(n)
        n = n / norm(n).view(-1, 1, 1, 1)
    gain_t = norm(dd.projection_pinv(A, t)(n))
    gain_op = norm(A.pinv(torch.randn(B, *SHAPE, generator=torch.Generator().manual_seed(6))))
    assert (gain_t <= 1 / t * (1 + 1e-4)).all() and (gain_t >= 0.5 / t).all(), gain_t
    assert (gain_op > 5 * norm(torch.randn(B, *SHAPE, generator=torch.Generator().manual_seed(6)))).all()


def test_projection_solvers_refuse_operators_without_pinv():
    class NoPinv(operators.LinearOperator):  # unnamed: not registered
        pass

    assert not dd.has_pinv(NoPinv(image_shape=SHAPE))
    A = operators.get("phase_retrieval", image_shape=SHAPE)
    assert not dd.has_pinv(A)  # nonlinear
    for name in ("mcg", "scoresde"):
        assert not solvers.get(name, prior()).supports(A)
        assert solvers.get(name, prior(), task="deblur_motion").supports(problem("deblur_motion")["A"])
    with pytest.raises(solvers.UnsupportedTask):
        solvers.get("scoresde", prior(), num_steps=2).solve(torch.zeros(B, *A(torch.zeros(B, *SHAPE)).shape[1:]), A)


def test_mcg_guidance_is_the_gradient_of_each_images_own_norm():
    """Documented deviation (solvers/mcg.py): grad of ||r_i|| per image, not of one whole-batch norm (MCG repo).
    At the first step x is each image's start noise, so image 0's gradient in a batch of 2 must equal its
    gradient alone; the whole-batch norm would scale it by ||r_0|| / ||r|| (< 1 here) instead."""
    prob = problem("inpaint_random")
    grads = {}
    for batch in (1, 2):
        solver = solvers.get("mcg", prior(), task="inpaint_random", num_steps=2)
        seen: list[torch.Tensor] = []
        solver.add_observer(lambda event, **q: seen.append(q["grad"]) if q["step"] == 0 else None)
        solver.solve(prob["y"][:batch], prob["A"].select(list(range(batch))), gens(0)[:batch])
        grads[batch] = seen[0]
    torch.testing.assert_close(grads[2][:1], grads[1], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(grads[2][1], grads[2][0])  # a different image's own gradient


# ---------------------------------------------------------------------- accuracy on the exact prior
CASES = [(s, t) for s in ("dps", "dpps", "mcg", "scoresde") for t in TASKS]


@pytest.mark.parametrize("name,task", CASES)
def test_close_to_exact_posterior(name, task):
    prob = problem(task)
    solver = solvers.get(name, prior(), task=task, num_steps=STEPS.get((name, task), DEFAULT_STEPS),
                         **EXTRA.get((name, task), {}))
    out = solver.solve(prob["y"], prob["A"], gens(0))
    err = ((out - prob["mean"]).flatten(1) ** 2).sum(1)
    ratio = err / prob["trace"]
    assert (ratio <= BOUNDS[(name, task)]).all(), f"{name}/{task}: ratio {ratio.tolist()} > {BOUNDS[(name, task)]}"
    beats = err < prob["trivial"] + prob["trace"]
    if (name, task) in WORSE_THAN_TRIVIAL:
        assert not beats.all(), f"{name}/{task} now beats the trivial estimate: update the docs and this test"
    else:
        assert beats.all(), (f"{name}/{task}: error {err.tolist()} not below trivial {prob['trivial'].tolist()} "
                             f"+ tr(Cov) {prob['trace'].tolist()}")


@pytest.mark.parametrize("name", ["dps", "dpps", "mcg", "scoresde"])
def test_non_finite_iterate_raises_solver_diverged(name):
    prob = problem("inpaint_random")
    y = prob["y"].clone()
    y[0, 0, 0, 0] = float("nan")
    with pytest.raises(solvers.SolverDiverged, match="non-finite"):
        solvers.get(name, prior(), task="inpaint_random", num_steps=4).solve(y, prob["A"], gens(0))
