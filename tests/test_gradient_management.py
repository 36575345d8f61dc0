"""SPGD's gradient management as one shared mechanism (solvers/gradient_management.py).

* the loop on a hand-made gradient sequence: u_N, u_{N-1}, m_{N-1} equal the warm-up / ADM recursion
  written out by hand (SPGD paper Eq. 10, 12-13); with N = 1 and ADM off it is one plain step;
* DPS with the options off is bit-identical to the released DPS step (a reference loop written here from the
  ddpm_steps pieces, the code solvers/dps.py had before the option existed);
* DPS + warm-up + ADM runs SPGD's loop: the same `gradient_management.warmup` is called by SPGD, DPS, DPPS and
  DAPS (a spy records every call), and one DPS step equals the hand-written warm-up with ADM;
* budgets count the warm-up NFE; observers see every inner step and change neither the output nor the NFE;
* bad settings are one-line SolverErrors.
"""
from __future__ import annotations

import functools

import pytest
import torch

import operators
import solvers
from priors.gaussian import embedded
from solvers import ddpm_steps as dd
from solvers import gradient_management as gm
from solvers.base import RNG, SolverError
from solvers.dps import dps_step

SHAPE = (3, 32, 32)
B = 2


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.lru_cache(maxsize=1)
def prior():
    return embedded(SHAPE[-1])


def gens(offset: int = 7) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + i) for i in range(B)]


@functools.lru_cache(maxsize=None)
def problem(task: str) -> tuple[object, torch.Tensor]:
    A = operators.get(task, image_shape=SHAPE, seeds=list(range(B)), sigma_y=0.05)
    x = prior().sample(B, gens(0))
    return A, A.measure(x, gens(100))


def randn(seed: int) -> torch.Tensor:
    return torch.randn(B, *SHAPE, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- the loop itself
@pytest.mark.parametrize("adm", [False, True])
def test_warmup_follows_the_recursion_on_a_hand_made_gradient_sequence(adm):
    grads = [randn(10 + j) for j in range(4)]
    calls = []

    def evaluate(u):
        calls.append(u)
        return grads[len(calls) - 1], f"aux{len(calls) - 1}"

    x, lr, beta = randn(1), 0.3, 0.9
    management = gm.GradientManagement(warmup_steps=4, adm=adm, beta=beta, cosine="global")
    w = gm.warmup(None, x, evaluate, lr, 4, management, step=0, noise={"sigma": 1.0})
    # by hand: m_0 = g_0; m_j = a beta m_{j-1} + (1 - a beta) g_j, a = (1 + cos) / 2 per image; u -= lr m
    u, m, us = x, None, [x]
    for g in grads:
        if adm and m is not None:
            cos = torch.nn.functional.cosine_similarity(g.flatten(1), m.flatten(1), dim=1).view(-1, 1, 1, 1)
            a = (1 + cos) / 2
            m = a * beta * m + (1 - a * beta) * g
        else:
            m = g
        u = u - lr * m
        us.append(u)
    assert len(calls) == 4 and all(torch.allclose(c, e, atol=1e-6) for c, e in zip(calls, us[:4]))
    assert torch.allclose(w.u, us[4], atol=1e-6) and torch.allclose(w.u_prev, us[3], atol=1e-6)
    assert torch.allclose(w.managed, m, atol=1e-6) and w.aux == "aux3"
    if not adm:  # without ADM the managed gradient is the raw one: the plain descent u - lr sum g_j
        assert torch.allclose(w.u, x - lr * sum(grads), atol=1e-5)


def test_one_step_without_adm_is_one_plain_gradient_step():
    g, x = randn(3), randn(4)
    w = gm.warmup(None, x, lambda u: (g, None), 0.5, 1, gm.GradientManagement())
    assert gm.GradientManagement().off and w.managed is g and w.u_prev is x
    assert torch.equal(w.u, x - 0.5 * g)


def test_drift_is_added_after_the_gradient_step():
    g, x, d = randn(3), randn(4), randn(5)
    w = gm.warmup(None, x, lambda u: (g, None), 0.5, 2, gm.GradientManagement(warmup_steps=2),
                  step=0, noise={}, drift=lambda u, j: d * (j + 1))
    assert torch.allclose(w.u, x - 0.5 * g + d - 0.5 * g + 2 * d, atol=1e-6)


def test_bad_settings_are_named():
    with pytest.raises(SolverError, match="warmup_steps"):
        solvers.get("dps", prior(), task="inpaint_random", warmup_steps=0).budget()
    A, y = problem("inpaint_random")
    with pytest.raises(SolverError, match="adm_cosine"):
        solvers.get("dps", prior(), task="inpaint_random", num_steps=2, adm=True, adm_cosine="cosine").solve(y, A)
    with pytest.raises(SolverError, match="adm_beta"):
        solvers.get("daps", prior(), task="inpaint_random", annealing_steps=2, adm=True, adm_beta=2.0).solve(y, A)


# ---------------------------------------------------------------------- DPS: off = as released
def released_dps(y, A, num_steps: int, zeta: float, generators) -> torch.Tensor:
    """The DPS loop as solvers/dps.py computed it before the option existed (same pieces, same order)."""
    p = prior()
    rng = RNG(generators, y.shape[0])
    x = dd.start_noise(p, y, rng)
    for step in dd.ddpm_grid(p.schedule, num_steps):
        xr = x.detach().requires_grad_(True)
        pred = dd.predict(p, xr, step)
        g = dd.norm_gradient(dd.residual_norm(y, A, pred.x0), xr)
        x_mean = (pred.mean - zeta * g).detach()
        x = x_mean + dd.ancestral_noise(step, pred.v, x_mean, rng)
    return x.detach().clamp(-1, 1)


@pytest.mark.parametrize("task", ["inpaint_random", "sr4"])
def test_dps_with_the_options_off_is_bit_identical_to_released_dps(task):
    A, y = problem(task)
    solver = solvers.get("dps", prior(), task=task, num_steps=20)
    assert (solver.warmup_steps, solver.adm) == (1, False)  # the defaults are off
    assert torch.equal(solver.solve(y, A, gens()), released_dps(y, A, 20, solver.zeta, gens()))
    assert solver.budget() == {"nfe_forward": 20, "nfe_backward": 20}


def test_dps_warmup_with_adm_equals_the_hand_written_warmup_then_the_dps_step():
    A, y = problem("deblur_gaussian")
    p = prior()
    step = dd.ddpm_grid(p.schedule, 1000)[600]
    x, zeta, beta = randn(2) * 0.8, 0.3, 0.95
    management = gm.GradientManagement(warmup_steps=3, adm=True, beta=beta)
    ours, pred = dps_step(p, x, step, y, A, zeta, management)
    u, m = x, None
    for _ in range(3):
        ur = u.detach().requires_grad_(True)
        pr = dd.predict(p, ur, step)
        g = dd.norm_gradient(dd.residual_norm(y, A, pr.x0), ur)
        m = gm.adm_update(m, g, beta, "global")
        u_prev, u = ur.detach(), (ur - zeta * m).detach()
    expected = u + (pr.mean.detach() - u_prev)  # u_N + (mean(u_{N-1}) - u_{N-1}) = mean(u_{N-1}) - zeta m
    assert torch.allclose(ours, expected, atol=1e-5)
    assert torch.allclose(pred.x0, pr.x0, atol=1e-6)


def test_dps_spgd_dpps_and_daps_run_the_same_warmup_loop(monkeypatch):
    calls = []
    original = gm.warmup

    def spy(solver, u, evaluate, lr, steps, management, **kw):
        calls.append((solver.name, steps, management))
        return original(solver, u, evaluate, lr, steps, management, **kw)

    monkeypatch.setattr(gm, "warmup", spy)
    A, y = problem("inpaint_random")
    runs = {"dps": dict(num_steps=3, warmup_steps=4, adm=True), "dpps": dict(num_steps=3, warmup_steps=2, adm=True),
            "spgd": dict(num_steps=3, warmup_steps=4), "daps": dict(annealing_steps=3, ode_steps=1, mcmc_steps=5, adm=True)}
    for name, kw in runs.items():
        solver = solvers.get(name, prior(), task="inpaint_random", **kw)
        solver.solve(y, A, gens())
        assert solver.prior.nfe.as_dict() == {k: v * B for k, v in solver.budget().items()}, name
    by_name = {}
    for name, steps, management in calls:
        by_name.setdefault(name, []).append((steps, management.adm))
    assert by_name == {"dps": [(4, True)] * 3, "dpps": [(2, True)] * 3, "spgd": [(4, True)] * 3,
                       "daps": [(5, True)] * 3}


def test_dps_budget_counts_the_warmup():
    A, y = problem("sr4")
    solver = solvers.get("dps", prior(), task="sr4", num_steps=5, warmup_steps=3, adm=True)
    x = solver.solve(y, A, gens())
    assert solver.budget() == {"nfe_forward": 15, "nfe_backward": 15}
    assert solver.prior.nfe.as_dict() == {"nfe_forward": 15 * B, "nfe_backward": 15 * B}
    assert torch.isfinite(x).all()
    assert not torch.equal(x, solvers.get("dps", prior(), task="sr4", num_steps=5).solve(y, A, gens()))


# ---------------------------------------------------------------------- observers
@pytest.mark.parametrize("name,kw,per_step,level", [
    ("dps", dict(num_steps=4), 1, "k"),
    ("dps", dict(num_steps=4, warmup_steps=3, adm=True), 3, "k"),
    ("spgd", dict(num_steps=4, warmup_steps=2), 2, "sigma"),
    ("daps", dict(annealing_steps=4, ode_steps=1, mcmc_steps=3), 3, "sigma"),
])
def test_observers_see_every_inner_step_and_change_nothing(name, kw, per_step, level):
    A, y = problem("inpaint_random")
    plain = solvers.get(name, prior(), task="inpaint_random", **kw)
    reference = plain.solve(y, A, gens())
    counted = plain.prior.nfe.as_dict()
    events = []
    solver = solvers.get(name, prior(), task="inpaint_random", **kw)
    solver.add_observer(lambda event, **q: events.append((event, q)))
    out = solver.solve(y, A, gens())
    assert torch.equal(out, reference)
    assert solver.prior.nfe.as_dict() == counted == {k: v * B for k, v in solver.budget().items()}
    assert {e for e, _ in events} == {"likelihood_step"} and len(events) == 4 * per_step
    assert [(q["step"], q["inner"]) for _, q in events] == [(i, j) for i in range(4) for j in range(per_step)]
    for _, q in events:
        assert level in q and q["x"].shape == q["grad"].shape == q["prior_direction"].shape == (B, *SHAPE)
        assert not q["grad"].requires_grad and not q["prior_direction"].requires_grad
