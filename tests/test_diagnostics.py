"""Gradient diagnostics (bench/diagnostics.py, bench/diagnose_cli.py; issue #16 part C).

* the angles of a hand-made 2-D problem equal their closed-form values;
* attaching the recorder changes no output bit and no NFE count, for every solver that reports likelihood
  gradients, and each of them does report them;
* the CLI rejects a solver without likelihood gradients in one line and writes CSV + figure otherwise.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import pytest
import torch

from bench import diagnostics as dg
from bench import solver_contract as contract
from bench.cli import main
from solvers.base import RNG, Solver, available, solver_class

# ---------------------------------------------------------------------------------- hand-made 2-D problem
# L(x) = ||M x - y||^2 with M = diag(1, 2), y = 0: grad = 2 M^T M x = (2 x1, 8 x2). Prior N(0, I): the denoiser's
# update D(x) - x = -x sigma^2 / (1 + sigma^2), a positive multiple of -x. Gradient descent with lr 0.1 from
# x_0 = (1, 1) gives x_t = (0.8^t, 0.2^t). Directions (as angles in the plane):
#   descent -grad_t ~ -(0.8^t, 4 0.2^t): theta_g(t) = atan2(4 0.2^t, 0.8^t) (+ 180 deg for both vectors),
#   prior -x_t ~ -(0.8^t, 0.2^t):        theta_p(t) = atan2(0.2^t, 0.8^t),
# so conflict_t = theta_g(t) - theta_p(t) and fluctuation_t = theta_g(t - 1) - theta_g(t).
M = torch.tensor([1.0, 2.0], dtype=torch.float64)
LR = 0.1
STEPS = 4


class Toy2D(Solver):
    """Gradient descent on the 2-D quadratic, reporting each step (x of shape (B, 2), float64)."""

    name = ""  # not registered
    defaults: ClassVar[dict[str, Any]] = {"lr": {"value": LR, "source": "test"}}

    def _solve(self, y: torch.Tensor, A: Any, rng: RNG) -> torch.Tensor:
        x = torch.ones_like(y)
        for t in range(STEPS):
            grad = 2 * M * (M * x - y)
            sigma = 1.0
            self.observe("likelihood_step", step=t, inner=0, sigma=sigma, x=x, grad=grad,
                         prior_direction=-x * sigma**2 / (1 + sigma**2))
            x = x - self.lr * grad
        return x


class _NoCounters:
    def reset_counters(self) -> None:
        pass


def theta_g(t: int) -> float:
    return math.degrees(math.atan2(4 * 0.2**t, 0.8**t))


def theta_p(t: int) -> float:
    return math.degrees(math.atan2(0.2**t, 0.8**t))


def test_toy_2d_angles_equal_closed_form():
    solver = Toy2D(_NoCounters())
    y = torch.zeros(1, 2, dtype=torch.float64)
    x, rows = dg.record(solver, y, A=None)
    assert torch.allclose(x, torch.tensor([[0.8**STEPS, 0.2**STEPS]], dtype=torch.float64))
    assert [r["step"] for r in rows] == list(range(STEPS))
    for t, r in enumerate(rows):
        assert r["conflict_deg"] == pytest.approx(theta_g(t) - theta_p(t), abs=1e-6)
        if t == 0:
            assert math.isnan(r["fluctuation_deg"]) and math.isnan(r["prior_fluctuation_deg"])
        else:
            assert r["fluctuation_deg"] == pytest.approx(theta_g(t - 1) - theta_g(t), abs=1e-6)
            assert r["prior_fluctuation_deg"] == pytest.approx(theta_p(t - 1) - theta_p(t), abs=1e-6)
        assert r["grad_norm"] == pytest.approx(2 * math.hypot(0.8**t, 4 * 0.2**t), rel=1e-12)
        assert r["prior_norm"] == pytest.approx(0.5 * math.hypot(0.8**t, 0.2**t), rel=1e-12)
        assert r["sigma"] == 1.0
    assert rows[0]["conflict_deg"] == pytest.approx(30.9637565, abs=1e-6)  # acos(10 / sqrt(136))
    assert not solver.observed  # record() detaches its observer


def test_conflict_is_measured_against_the_descent_direction():
    g = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    prior = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 3.0]])  # agrees with -g, opposes it, orthogonal
    rec = dg.GradientRecorder()
    rec("likelihood_step", step=0, grad=g, prior_direction=prior)
    assert [r["conflict_deg"] for r in rec.rows] == pytest.approx([0.0, 180.0, 90.0])
    rec("other_event", grad=g)  # other events are ignored
    assert len(rec.rows) == 3


def test_recorder_converts_ddpm_index_to_sigma_and_reads_managed_update():
    from priors.schedule import VPSchedule
    sched = VPSchedule()
    rec = dg.GradientRecorder(image_ids=["a"], schedule=sched)
    g = torch.tensor([[1.0, 0.0]])
    rec("likelihood_step", step=0, k=500, grad=g, managed=g.clone())
    rec("likelihood_step", step=0, inner=1, k=500, grad=g, managed=torch.tensor([[1.0, 1.0]]))
    ab = float(sched.abar(torch.tensor(500.0, dtype=torch.float64)))
    assert rec.rows[0]["sigma"] == pytest.approx(math.sqrt((1 - ab) / ab))
    assert rec.rows[1]["update_fluctuation_deg"] == pytest.approx(45.0)
    assert rec.rows[1]["fluctuation_deg"] == pytest.approx(0.0)
    assert math.isnan(rec.rows[0]["conflict_deg"])  # no prior direction reported
    assert rec.rows[1]["image"] == "a" and rec.rows[1]["inner"] == 1


def test_summary_quartiles_and_phases():
    rows = [{"step": 0, "inner": 0, "sigma": 1.0, "image": i, "conflict_deg": float(v)}
            for i, v in enumerate([10, 20, 30, 40, 50])]
    s = dg.summarize(rows, quantities=("conflict_deg",))
    assert (s[0]["conflict_deg_q25"], s[0]["conflict_deg_median"], s[0]["conflict_deg_q75"]) == (20.0, 30.0, 40.0)
    phased = [{"step": t, "conflict_deg": float(t)} for t in range(6)]
    assert dg.phase_medians(phased, "conflict_deg") == [0.5, 2.5, 4.5]


# ---------------------------------------------------------------------------------- observers change nothing
INSTRUMENTED = sorted(n for n in dg.GRADIENT_SOLVERS if n in available())
TASKS = ("inpaint_random", "deblur_gaussian")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", INSTRUMENTED)
def test_observer_changes_no_output_bit_and_no_nfe(name, task):
    prior = contract.gaussian_prior()
    cls = solver_class(name)
    _, y = contract.measurement(prior, task, batch=2)
    A = contract.operator(task, [0, 1], contract.image_shape(prior))
    plain = cls(prior, task=task, **cls.smoke)
    assert plain.supports(A)  # every solver with a likelihood gradient runs both tasks: nothing is skipped
    x_plain = plain.solve(y, A, contract.generators([0, 1]))
    nfe_plain = prior.nfe.as_dict()
    watched = cls(prior, task=task, **cls.smoke)
    x_watched, rows = dg.record(watched, y, A, contract.generators([0, 1]), image_ids=["i0", "i1"])
    assert torch.equal(x_plain, x_watched)
    assert prior.nfe.as_dict() == nfe_plain
    assert rows, f"{name} reported no likelihood_step event"
    assert {r["image"] for r in rows} == {"i0", "i1"}
    assert len(rows) % 2 == 0 and any(r["grad_norm"] > 0 for r in rows)  # (RED-Diff starts at A^+ y: 0 on masks)
    conflicts = [r["conflict_deg"] for r in rows if not math.isnan(r["conflict_deg"])]
    assert conflicts and all(0 <= c <= 180 for c in conflicts), f"{name}: no prior direction reported"
    assert not watched.observed


def test_every_solver_with_a_likelihood_gradient_is_instrumented():
    # the list; DAPS / PiGDM join when they are registered
    assert {"dps", "dpps", "mcg", "spgd", "dcdp", "reddiff"} <= set(INSTRUMENTED)
    assert not dg.emits_likelihood_steps(solver_class("ddrm"))


# ---------------------------------------------------------------------------------- CLI
def test_cli_rejects_solver_without_likelihood_gradient(capsys):
    assert main(["diagnose", "--solver", "ddrm", "--task", "sr4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "ddrm" in err and "no likelihood gradient" in err and "dps" in err


def test_cli_rejects_bad_set(capsys):
    assert main(["diagnose", "--solver", "mcg", "--task", "sr4", "--set", "mcg.alpha=1"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_cli_writes_csv_figure_and_summary(tmp_path, capsys):
    rc = main(["diagnose", "--solver", "mcg", "--task", "inpaint_random", "--images", "2", "--size", "32",
               "--set", "num_steps=6", "--out", str(tmp_path), "--label", "mcg6"])
    assert rc == 0, capsys.readouterr().err
    rows = dg.read_csv(tmp_path / "mcg6_inpaint_random.csv")
    assert len(rows) == 2 * 6 and {r["step"] for r in rows} == set(range(6))
    assert all(0 <= r["conflict_deg"] <= 180 for r in rows)
    assert (tmp_path / "mcg6_inpaint_random.png").stat().st_size > 0
    assert (tmp_path / "mcg6_inpaint_random.pdf").stat().st_size > 0
    header = (tmp_path / "mcg6_inpaint_random.csv").read_text().splitlines()[:20]
    assert any("conflict_deg = angle(-grad, prior_direction)" in line for line in header)
    assert any('"num_steps": 6' in line for line in header)
    assert main(["diagnose", "--summarize", "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "| mcg6 | inpaint_random | 6+6 |" in summary


def test_cli_needs_something_to_do(capsys, tmp_path):
    assert main(["diagnose", "--out", str(tmp_path)]) == 2
    assert "nothing to do" in capsys.readouterr().err
    assert main(["diagnose", "--summarize", "--out", str(tmp_path)]) == 2
    assert "no run summaries" in capsys.readouterr().err


def test_update_that_is_the_gradient_itself_is_not_reported_twice():
    g = torch.tensor([[1.0, 2.0]])
    rec = dg.GradientRecorder()
    solver = Toy2D(_NoCounters())
    solver.add_observer(rec)
    solver.observe("likelihood_step", step=0, grad=g, managed=g)  # observe() detaches: new tensor objects
    solver.observe("likelihood_step", step=1, grad=g, managed=2 * g)
    assert math.isnan(rec.rows[0]["update_norm"])
    assert rec.rows[1]["update_norm"] == pytest.approx(2 * math.sqrt(5))


def test_cli_truths_from_the_protocol_images(tmp_path, capsys):
    rc = main(["diagnose", "--solver", "reddiff", "--task", "deblur_gaussian", "--images", "2", "--size", "32",
               "--truths", "data", "--set", "num_steps=4", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    rows = dg.read_csv(tmp_path / "reddiff_deblur_gaussian.csv")
    assert {r["image"] for r in rows} == {"demo/astronaut", "demo/coffee"}  # the manifest's first two
    assert "first 2 images of demo" in (tmp_path / "reddiff_deblur_gaussian.json").read_text()
