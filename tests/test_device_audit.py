"""The GPU step loop, proven on CPU (issue 11): bench/device_audit.py runs every solver x Table 1 task on the
`meta` device, where a CPU tensor mixed into device work raises and every host read / host-device copy is
counted. Budget per solve: 0 copies after the first step (one-time transfers such as an operator's parameters
or the schedule table happen in step 1) and at most ceil(steps / Solver.check_every) + 1 host reads (the
divergence flag, read every 10 checks and at the end). Also: per-image noise drawn on the run's device, the
deferred divergence check, CG without read-backs, and DPPS's candidate operator built on the device."""
from __future__ import annotations

import math
import types

import pytest
import torch

import operators
from bench import seeding
from bench.device_audit import builtin_solvers, AuditNetPrior, DeviceAudit, audit_operator, audit_prior, audit_solve, read_budget, table1_pairs
from operators.linalg import cg_prox, conjugate_gradient
from operators.noise import draw_device, randn_per_image
from solvers import ddpm_steps as dd
from solvers.base import Solver, SolverDiverged

# more steps than the smoke settings where those have fewer than 10 (so a per-step read exceeds the budget)
STEPS = {"ddrm": {"num_steps": 12}, "diffpir": {"num_steps": 12}, "pnp_admm": {"iterations": 12},
         "dcdp": {"rounds": 4, "dc_steps": 3, "ddim_steps": 3}}
ONE_STEP = {"hypir": 1}  # one-network-call solvers: the whole solve is one step
CASES = [(s, t, {}) for s, t in table1_pairs()] + \
        [("pnp_admm", t, {"denoiser": "prior"}) for t in ("inpaint_random", "deblur_motion", "sr4")]


def assert_within_budget(r: dict) -> None:
    assert r["copies_after_first_step"] == 0, f"{r['solver']}/{r['task']}: host-device copies in the loop: {r['events']}"
    assert r["host_reads"] <= read_budget(r["steps"], check_every=10), \
        f"{r['solver']}/{r['task']}: {r['host_reads']} host reads in {r['steps']} steps: {r['events']}"


def test_every_solver_and_table1_task_is_audited():
    assert {s for s, _, _ in CASES} == set(builtin_solvers()) and "spgd" in builtin_solvers()
    # 14 solvers x 4 tasks; DDRM and DDNM have no motion blur (no SVD); PnP-ADMM also with the prior denoiser
    assert len(CASES) == 14 * 4 - 2 + 3


@pytest.mark.parametrize("name,task,extra", CASES, ids=[f"{s}-{t}-{e.get('denoiser', '')}" for s, t, e in CASES])
def test_step_loop_has_no_copies_and_syncs_at_most_every_10_steps(name, task, extra):
    steps = "check" if name == "pnp_admm" and "denoiser" not in extra else "network"
    r = audit_solve(name, task, **{**STEPS.get(name, {}), **extra}, steps=steps)
    assert r["steps"] >= ONE_STEP.get(name, 9)
    assert_within_budget(r)


@pytest.mark.parametrize("name", ["spgd", "ddrm"])
def test_adm_prior_runs_on_meta_without_copies_or_reads(name):
    """The real architecture (random-weight small ADM UNet, bf16 autocast requested) forward and backward."""
    prior = audit_prior(32)
    prior.autocast_dtype = torch.bfloat16  # autocast is skipped on meta (it has no autocast)
    extra = {"num_steps": 2, "warmup_steps": 1} if name == "spgd" else {"num_steps": 4}
    r = audit_solve(name, "sr4", prior=prior, **extra)
    assert r["network_calls"] == (2 if name == "spgd" else 4)
    assert r["copies_after_first_step"] == 0 and r["host_reads"] <= 1, r["events"]


# ---------------------------------------------------------------------------- the audit catches regressions
def test_a_cpu_tensor_mixed_into_device_work_fails(monkeypatch):
    original = dd.ancestral_noise
    monkeypatch.setattr(dd, "ancestral_noise", lambda step, v, like, rng: original(step, v, like, rng)
                        + torch.zeros(like.shape[1:]))
    with pytest.raises(RuntimeError, match="not on the expected device meta"):
        audit_solve("dps", "inpaint_random", num_steps=3)


def test_a_per_step_host_copy_is_counted(monkeypatch):
    """The old `_per_image` (torch.as_tensor(python number, device=...)) copies from the host on every call."""
    from priors.base import DiffusionPrior
    old = lambda self, value, x: torch.as_tensor(value, dtype=torch.float64, device=x.device).expand(x.shape[0])  # noqa: E731
    monkeypatch.setattr(DiffusionPrior, "_per_image", old)
    r = audit_solve("dps", "inpaint_random", num_steps=12)
    assert r["copies_after_first_step"] >= 11
    with pytest.raises(AssertionError, match="copies in the loop"):
        assert_within_budget(r)


def test_a_per_step_sync_is_counted(monkeypatch):
    monkeypatch.setattr(Solver, "check_every", 1)
    r = audit_solve("reddiff", "sr4", num_steps=20)
    assert r["host_reads"] == 20
    with pytest.raises(AssertionError, match="host reads"):
        assert_within_budget(r)


def test_audit_counts_reads_and_copies_of_device_tensors_only():
    x = torch.zeros(4, device="meta")
    with DeviceAudit() as audit:
        assert bool(x.sum() > 0) is True  # answered, counted
        _ = float(torch.ones(2).sum())  # a CPU read: not a device sync
        _ = torch.arange(3).to("meta")
        _ = torch.as_tensor(2.0, device="meta")
        _ = x + torch.tensor(1.0)  # a 0-dim CPU tensor is a kernel scalar: no copy
        _ = x * 2.0
    assert (audit.host_reads, audit.cpu_reads, audit.copies) == (1, 1, 2)


# ---------------------------------------------------------------------------- randomness on the run's device
def test_per_image_draws_equal_one_stream_per_image_and_stay_on_the_generators_device():
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4, 5)]  # noqa: E731
    out = randn_per_image(torch.empty(3, 3, 7, 9), gens())
    ref = torch.stack([torch.randn(3, 7, 9, generator=g) for g in gens()])
    assert torch.equal(out, ref)
    assert torch.equal(randn_per_image(torch.empty(2, 3, 7, 9), gens()[1:]), ref[1:])
    cpu_gen, like = torch.Generator(), torch.empty(2)
    assert draw_device(cpu_gen, like) == torch.device("cpu")
    assert draw_device(cpu_gen, torch.empty(2, device="meta")).type == "meta"
    on_gpu = types.SimpleNamespace(device=torch.device("cuda", 0))  # CPU streams on a GPU run: drawn on CPU
    assert draw_device(cpu_gen, on_gpu) == torch.device("cpu")
    assert randn_per_image(torch.empty(2, 5, device="meta"), [torch.Generator()] * 2).device.type == "meta"


def test_seeding_makes_the_same_stream_on_the_requested_device():
    a = seeding.noise_generator(42, "sr4", "ffhq/00000")
    b = seeding.noise_generator(42, "sr4", "ffhq/00000", device="cpu")
    m = seeding.solver_generator(42, "sr4", "ffhq/00000", "dps", device="meta")
    assert a.initial_seed() == b.initial_seed() == seeding.stream_seed(42, "noise", "sr4", "ffhq/00000")
    assert m.device.type == "cpu" and m.initial_seed() == seeding.stream_seed(42, "solver", "sr4", "ffhq/00000", "dps")


# ---------------------------------------------------------------------------- divergence flag
class _Counting(Solver):  # no `name`: not registered
    defaults = {"bad_from": {"value": 13, "source": "test"}, "calls": {"value": 25, "source": "test"}}

    def _solve(self, y, A, rng):
        self.seen = 0
        for i in range(self.calls):
            self.seen += 1
            self.check_finite(y * (float("nan") if i >= self.bad_from else 1.0), f"step {i}")
        return y


def test_divergence_is_read_back_every_10_checks_and_names_the_first_failing_step():
    A = operators.get("inpaint_random", image_shape=(3, 8, 8))
    s = _Counting(prior=AuditNetPrior(8))
    with pytest.raises(SolverDiverged, match=r"non-finite iterate at step 13$"):
        s.solve(torch.zeros(1, 3, 8, 8), A)
    assert s.seen == 20  # the flag is read at the 10th and 20th check
    s.params["bad_from"] = 22
    with pytest.raises(SolverDiverged, match="at step 22$"):
        s.solve(torch.zeros(1, 3, 8, 8), A)
    assert s.seen == 25  # read at the end of the solve
    s.params["bad_from"] = 99
    assert s.solve(torch.zeros(1, 3, 8, 8), A).shape == (1, 3, 8, 8)
    with pytest.raises(SolverDiverged, match="outside"):  # a helper called outside a solve checks at once
        s.check_finite(torch.tensor([float("inf")]), "outside")


# ---------------------------------------------------------------------------- CG, DPPS operator, caches
def test_cg_result_does_not_depend_on_how_often_it_reads_back():
    A = audit_operator("deblur_motion", 32, 2)
    z = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = A(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    runs = [cg_prox(A.forward, A.adjoint, z, y, 0.3, tol=1e-4, max_iter=40, check_every=k) for k in (1, 7, 0)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    b = torch.zeros(2, 5, device="meta")
    with DeviceAudit() as audit:
        conjugate_gradient(lambda v: 2 * v, b, max_iter=25)
    assert audit.host_reads == 0 and audit.copies == 0


@pytest.mark.parametrize("task", ["inpaint_random", "deblur_motion", "deblur_gaussian", "sr4"])
def test_repeat_interleave_is_select_of_repeated_rows_and_copies_nothing(task):
    A = audit_operator(task, 32, 3)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    A(x)  # warm the caches, as the solve does before selecting candidates
    xr = x.repeat_interleave(4, dim=0)
    assert torch.equal(A.repeat_interleave(4)(xr), A.select(torch.arange(3).repeat_interleave(4))(xr))
    M = audit_operator(task, 32, 3)
    xm = torch.zeros(3, 3, 32, 32, device="meta")
    M(xm)
    with DeviceAudit() as audit:
        M.repeat_interleave(5)(xm.repeat_interleave(5, dim=0))
    assert audit.copies == 0, audit.events()


def test_read_budget_is_one_per_ten_steps_plus_the_final_read():
    assert [read_budget(n) for n in (1, 10, 11, 20, 1000)] == [2, 2, 3, 3, 101]
    assert read_budget(50) == math.ceil(50 / Solver.check_every) + 1
