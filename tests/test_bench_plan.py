"""`python -m bench plan` (bench/plan.py): projected hours from NFE budgets and a network measurement.

No test times anything: the network is a fake whose forward and backward advance a fake clock by a
known number of seconds per image, or the timings are given, so every hour figure is asserted exactly:
    s/image = (nfe_forward - nfe_backward) t_fwd + nfe_backward t_fwdbwd,  hours = images s/image / 3600.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import solvers
from bench import plan as planning
from bench import protocol as proto
from bench.errors import BenchError
from priors.base import DiffusionPrior

ROOT = Path(__file__).resolve().parents[1]
FWD, BWD = 0.25, 0.5  # fake seconds per image: forward, backward (a VJP also needs its forward)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class ClockedPrior(DiffusionPrior):
    """A 'network' whose forward costs FWD s per image and whose backward costs BWD s per image, on a fake clock."""

    def __init__(self, clock: FakeClock, size: int = 64) -> None:
        super().__init__((3, size, size))
        self.clock = clock

    def _model(self, x_k, k):
        batch = x_k.shape[0]
        self.clock.t += FWD * batch
        out = 0.5 * x_k
        if out.requires_grad:
            def on_backward(grad):
                self.clock.t += BWD * batch
            out.register_hook(on_backward)
        return out, None


def demo() -> proto.Protocol:
    return proto.load("demo")


def expected_seconds(nfe_f: int, nfe_b: int, t_f: float, t_fb: float) -> float:
    return (nfe_f - nfe_b) * t_f + nfe_b * t_fb


def test_measure_network_reads_forward_and_forward_backward_per_call():
    clock = FakeClock()
    timing = planning.measure_network(ClockedPrior(clock), batch=3, device=torch.device("cpu"), repeats=2,
                                      clock=clock)
    assert timing.batch == timing.measured_batch == 3
    assert timing.t_forward == pytest.approx(3 * FWD)
    assert timing.t_forward_backward == pytest.approx(3 * (FWD + BWD))
    assert timing.t_forward_per_image == pytest.approx(FWD)
    assert timing.t_forward_backward_per_image == pytest.approx(FWD + BWD)


def test_quick_measures_batch_one_and_scales_linearly():
    clock = FakeClock()
    timing = planning.measure_at(ClockedPrior(clock), 8, torch.device("cpu"), quick=True, repeats=1, clock=clock)
    assert timing.measured_batch == 1 and timing.batch == 8
    assert timing.t_forward == pytest.approx(8 * FWD)
    assert timing.t_forward_backward == pytest.approx(8 * (FWD + BWD))
    assert "quick" in timing.note and "scaled linearly to 8" in timing.note
    # activations scale with the batch, weights do not
    one = planning.NetTiming(batch=1, t_forward=1.0, t_forward_backward=3.0, mem_forward_mb=110.0,
                             mem_forward_backward_mb=300.0, measured_batch=1, weights_mb=100.0)
    big = one.scaled(4, "x")
    assert (big.mem_forward_mb, big.mem_forward_backward_mb, big.t_forward) == (140.0, 900.0, 4.0)


def test_plan_hours_on_the_demo_protocol_with_a_fake_clock(monkeypatch):
    """End to end on the demo protocol (4 images, batch 4, 12 solver entries x 4 tasks), with the network
    replaced by the clocked fake: every row's hours follow the formula from its solver's budget()."""
    clock = FakeClock()
    monkeypatch.setattr(planning, "load_plan_prior", lambda ds, dev, speed, rw: ClockedPrior(clock, ds.image_size))
    p = demo()
    rows = planning.plan(p, "cpu", repeats=2, clock=clock)
    assert len(rows) == len(p.datasets) * len(p.tasks) * len(p.solvers)
    by = {(r.task, r.solver): r for r in rows}
    dps = by[("inpaint_random", "dps")]
    budget = solvers.get("dps", ClockedPrior(FakeClock()), task="inpaint_random", dataset="demo").budget()
    assert (dps.nfe_forward, dps.nfe_backward) == (budget["nfe_forward"], budget["nfe_backward"]) == (1000, 1000)
    assert (dps.images, dps.batch_size) == (4, 4)
    assert dps.seconds_per_image == pytest.approx(1000 * (FWD + BWD))
    assert dps.hours == pytest.approx(4 * 1000 * (FWD + BWD) / 3600)
    scoresde = by[("sr4", "scoresde")]
    assert (scoresde.nfe_forward, scoresde.nfe_backward) == (1000, 0)
    assert scoresde.hours == pytest.approx(4 * 1000 * FWD / 3600)
    spgd = by[("deblur_gaussian", "spgd")]
    assert spgd.hours == pytest.approx(4 * expected_seconds(500, 500, FWD, FWD + BWD) / 3600)
    ddrm_motion = by[("deblur_motion", "ddrm")]  # no SVD for motion blur: not run, no time
    assert not ddrm_motion.supported and ddrm_motion.hours == 0.0 and "unsupported" in ddrm_motion.note
    assert by[("sr4", "oracle_mean")].hours == 0.0
    want = sum(r.images * expected_seconds(r.nfe_forward, r.nfe_backward, FWD, FWD + BWD) / 3600
               for r in rows if r.supported)
    assert planning.total_hours(rows) == pytest.approx(want)
    text = planning.format_plan(rows, title="demo", device="cpu")
    assert want > 10 and f"**Total: {want:.1f} h ({want / 24:.1f} days)" in text
    assert "| demo | inpaint_random | dps | 4 | 1000 | 1000 | 750 | 0.83 |" in text  # 4 x 750 s = 0.83 h


def test_injected_timings_batch_and_limit():
    p = demo()
    timing = planning.NetTiming(batch=2, t_forward=0.5, t_forward_backward=2.5, mem_forward_mb=10.0,
                                mem_forward_backward_mb=30.0, measured_batch=2)
    rows = planning.plan(p.restrict(solvers=["spgd", "reddiff"]), "cpu", limit=2, timings={"demo": timing})
    spgd = next(r for r in rows if r.solver == "spgd" and r.task == "sr4")
    assert (spgd.images, spgd.batch_size) == (2, 2)  # limit 2 < protocol batch 4
    assert spgd.seconds_per_image == pytest.approx(500 * 2.5 / 2)
    assert spgd.peak_mem_mb == 30.0  # backprop solver: forward+backward memory
    reddiff = next(r for r in rows if r.solver == "reddiff" and r.task == "sr4")
    assert reddiff.seconds_per_image == pytest.approx(1000 * 0.5 / 2) and reddiff.peak_mem_mb == 10.0
    hours = 4 * 2 * (500 * 2.5 / 2 + 1000 * 0.5 / 2) / 3600  # 4 tasks x 2 images x (spgd + reddiff)
    assert planning.summary_line(rows) == f"plan: 16 image solves, ~{hours:.2f} h of network time on this device " \
                                          f"({hours / 24:.1f} days)"


def test_batch_size_precedence():
    p = demo()
    ds = p.datasets[0]
    assert planning.dataset_batch(p, ds, None, 100) == p.batch_size
    assert planning.dataset_batch(p, ds, 16, 100) == 16  # --batch-size wins
    assert planning.dataset_batch(p, ds, 16, 3) == 3  # never more than the images
    if hasattr(ds, "batch_size"):
        import dataclasses
        assert planning.dataset_batch(p, dataclasses.replace(ds, batch_size=2), None, 100) == 2


def test_no_measure_gives_nfe_without_hours():
    rows = planning.plan(demo().restrict(solvers=["dps"], tasks=["sr4"]), "cpu", measure=False)
    assert [(r.nfe_forward, r.nfe_backward, r.hours) for r in rows] == [(1000, 1000, None)]
    assert "not measured" in planning.format_plan(rows)


def test_random_weights_builds_the_registered_architecture_and_rejects_others():
    prior = planning.random_weight_prior("ffhq256", torch.device("meta"))
    assert prior.image_shape == (3, 256, 256) and prior.name == "ffhq256"
    assert prior.unet.model_channels == 128
    with pytest.raises(BenchError, match="not a registered checkpoint"):
        planning.random_weight_prior("gaussian", torch.device("meta"))


def test_missing_checkpoint_is_one_line_suggesting_random_weights(tmp_path):
    env = {**os.environ, "RESTOREBENCH_CHECKPOINTS": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "bench", "plan", "--protocol", "table1", "--no-measure"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ffhq256" in errors[0] and "--random-weights" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
