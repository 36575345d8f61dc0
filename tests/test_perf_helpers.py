"""Pure helper logic of the performance benchmark (benchmarks/perf.py, benchmarks/deepinv_side_by_side.py); nothing is timed."""
import math

import pytest
import torch

import operators
import solvers
from benchmarks import clocks, perf, workload
from priors.gaussian import GaussianPrior


def test_network_limit_and_ratio_arithmetic():
    # DPS-like: 8 forward + 8 backward calls; t_vjp is what a backward adds to its forward
    t_fwd, t_fb = 0.5, 1.25
    t_vjp = workload.vjp_increment(t_fwd, t_fb)
    assert t_vjp == pytest.approx(0.75)
    limit = workload.network_limit(8, 8, t_fwd, t_vjp)
    assert limit == pytest.approx(8 * t_fb)  # every call differentiated: limit = NFE * t(forward + VJP)
    assert workload.network_limit(5, 0, t_fwd, t_vjp) == pytest.approx(2.5)
    assert perf.overhead_ratio(1.1 * limit, limit) == pytest.approx(1.1)
    assert perf.overhead_ratio(1.0, 0.0) == math.inf
    assert workload.vjp_increment(1.0, 0.9) == 0.0  # noise never makes a backward pass negative
    with pytest.raises(ValueError):
        workload.network_limit(-1, 0, 0.1, 0.1)
    assert perf.images_per_second(16, 4.0) == 4.0


def test_window_takes_the_samples_around_a_solve():
    samples = [clocks.Timing(float(i), float(i)) for i in range(6)]
    # solve j ran between sample j and sample j + 1
    assert [t.wall for t in workload.window(samples, 2)] == [1.0, 2.0, 3.0, 4.0]
    assert [t.wall for t in workload.window(samples, 0)] == [0.0, 1.0, 2.0]
    assert [t.wall for t in workload.window(samples, 5)] == [4.0, 5.0]
    assert clocks.median_timing(workload.window(samples, 2)).wall == 2.5


def test_perf_step_counts_are_small_and_call_the_network():
    prior = GaussianPrior(image_shape=(3, 16, 16))
    for name in solvers.available():
        budget = solvers.get(name, prior, task="inpaint_random", **perf.perf_overrides(name)).budget()
        assert 1 <= budget["nfe_forward"] <= 20, (name, budget)  # a limit exists and the run stays short
        if name in perf.BACKPROP_SOLVERS:
            assert budget["nfe_backward"] == budget["nfe_forward"], name
    for name in perf.MEMORY_OVERRIDES:
        budget = solvers.get(name, prior, **perf.perf_overrides(name, perf.MEMORY_OVERRIDES)).budget()
        assert budget["nfe_backward"] <= 2, name


def test_operator_clock_keeps_results_and_clocks_selected_operators():
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    A = operators.get("inpaint_random", image_shape=(3, 16, 16), seeds=[0, 1, 2])
    B = operators.get("inpaint_random", image_shape=(3, 16, 16), seeds=[0, 1, 2])
    clock = clocks.OperatorClock(torch.device("cpu"))
    clock.attach(B)
    assert torch.equal(B(x), A(x))
    assert torch.equal(B.prox(x, A(x), 0.3), A.prox(x, A(x), 0.3))
    idx = torch.tensor([2, 2, 0])
    assert torch.equal(B.select(idx)(x[idx]), A.select(idx)(x[idx]))  # the copy uses ITS masks
    assert clock.calls == 3 and clock.seconds >= 0


def test_peak_memory_sees_a_held_allocation():
    clocks._malloc_setup()
    with clocks.peak_memory(torch.device("cpu")) as mem:
        block = torch.ones(16, 2**20)  # 64 MiB, touched
        block.add_(1)
    assert mem["peak_bytes"] >= 60 * 2**20
    del block


def test_deepinv_wrapper_is_our_denoiser_on_the_unit_range():
    pytest.importorskip("deepinv")
    from benchmarks import deepinv_side_by_side as perf_deepinv

    prior = GaussianPrior(image_shape=(3, 8, 8))
    den = perf_deepinv.deepinv_denoiser(prior)
    g = torch.Generator().manual_seed(0)
    x01 = torch.rand(2, 3, 8, 8, generator=g)
    sigma = torch.tensor([0.05, 0.2])
    prior.reset_counters()
    out = den(x01, sigma)
    assert prior.nfe.forward == 2  # one counted network evaluation per image
    expected = (prior.denoise(2 * x01 - 1, 2 * sigma) + 1) / 2
    torch.testing.assert_close(out, expected)
    # a scalar sigma is that sigma for every image
    torch.testing.assert_close(den(x01, 0.2)[1], out[1])
    # deepinv's step counts are sized by counted calls: DPS(S steps) makes S - 1 forward and backward calls
    assert perf_deepinv.deepinv_nfe("dps", 9) == (8, 8)
    assert perf_deepinv.matching_steps("ddrm", 5) == 5


def test_misses_are_the_overhead_rows_above_target_on_both_clocks():
    rows = [{"section": "overhead", "status": "ok", "solver": "a", "task": "t", "ratio_wall": 1.2, "ratio_cpu": 1.05},
            {"section": "overhead", "status": "ok", "solver": "b", "task": "t", "ratio_wall": 1.3, "ratio_cpu": 1.2},
            {"section": "overhead", "status": "unsupported", "solver": "c", "task": "t"},
            {"section": "table1_size", "status": "ok", "solver": "d", "task": "t", "ratio_wall": 2, "ratio_cpu": 2}]
    assert perf.misses(rows) == [("b", "t")]  # a meets the target on CPU time; only section 1 counts


def test_network_clock_splits_forward_and_backward_and_restores_the_prior():
    from benchmarks.clocks import NetworkClock

    prior = GaussianPrior(image_shape=(3, 8, 8))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = prior.eps(x, 300)
    clock = NetworkClock(torch.device("cpu"))
    with clock.attached(prior):
        assert torch.equal(prior.eps(x, 300), reference)  # the clock does not change results
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(prior.eps(xg, 300).square().sum(), xg)
    assert clock.calls == 2 and clock.forward_s > 0 and clock.backward_s > 0
    assert clock.seconds == clock.forward_s + clock.backward_s
    assert "_model" not in prior.__dict__  # the class method is back
    xg = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(prior.eps(xg, 300).square().sum(), xg)
    assert torch.equal(g, g_ref)
    before = clock.backward_s
    with clock.attached(prior):
        prior.eps(x, 300)  # no autograd: no backward is watched
    assert clock.backward_s == before


def test_rounded_prior_rounds_the_networks_input_and_output_and_counts_calls():
    from benchmarks.precision import RoundedPrior

    base = GaussianPrior(image_shape=(3, 8, 8))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for dtype in (torch.bfloat16, torch.float16):
        rounded = RoundedPrior(base, dtype)
        expected = base.eps(x.to(dtype).float(), 400).to(dtype).float()
        got = rounded.eps(x, 400)
        assert torch.equal(got, expected)
        assert not torch.equal(got, base.eps(x, 400))  # the rounding is real
        assert rounded.nfe.forward == 2
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(rounded.eps(xg, 400).sum(), xg)  # differentiable, as SPGD needs
        assert torch.isfinite(g).all() and rounded.nfe.backward == 2


def test_gpu_figures_code_path_runs_on_the_cpu():
    """No GPU here: the path `make perf DEVICE=cuda` takes (prior variants, SPGD at its perf step count, memory)
    is exercised on the CPU so that it is known to run end to end; its CUDA timings cannot be checked here."""
    rows = perf.gpu_figures(torch.device("cpu"), full=False, log=lambda msg: None, variants=[("fp32", {})])
    (row,) = rows
    assert row["status"] == "ok", row
    budget = solvers.get("spgd", GaussianPrior(image_shape=(3, 8, 8)), **perf.perf_overrides("spgd")).budget()
    assert (row["nfe_forward"], row["nfe_backward"]) == (budget["nfe_forward"], budget["nfe_backward"])
    assert row["s_per_image"] > 0 and row["t_fwd_s"] > 0 and row["t_fb_s"] > 0
