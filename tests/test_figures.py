"""Quality-vs-cost figures from a hand-made record set: points, Pareto front, colours, files."""
from __future__ import annotations

import numpy as np
import pytest

from bench import figures, tables


def rec(solver, h, image, psnr, lpips, nfe_f, nfe_b, seconds, *, task="sr4", status="ok", fp="f1",
        time="2026-11-25T10:00:00Z", solver_class=None):
    return {"dataset": "demo", "image_id": image, "task": task, "solver": solver, "solver_class": solver_class or solver,
            "seed": 0, "config_hash": h, "fingerprint": fp, "image_sha256": image, "status": status, "message": "",
            "psnr": psnr if status == "ok" else None, "ssim": 0.5, "lpips": lpips if status == "ok" else None,
            "nfe_forward": nfe_f, "nfe_backward": nfe_b, "seconds": seconds, "peak_mem_mb": 1.0, "batch_size": 1,
            "device": "cpu", "code_version": "x", "time": time}


def cfg(name, **params):
    return {"solver": {"name": name, "params": params, "overrides": {}}, "metrics": {}, "task": {"name": "sr4",
            "sigma_y": 0.05}, "dataset": {"name": "demo", "prior": "gaussian", "image_size": 64, "manifest": "m"}}


RECORDS = [
    # DPS at two step counts (an NFE sweep): 100 and 1000 steps, forward + backward each step
    rec("dps", "d100", "a", 20.0, 0.40, 100, 100, 0.5), rec("dps", "d100", "b", 22.0, 0.30, 100, 100, 0.7),
    rec("dps", "d1k", "a", 24.0, 0.20, 1000, 1000, 5.0), rec("dps", "d1k", "b", 26.0, 0.20, 1000, 1000, 7.0),
    # DDRM: cheap and good (on the front); one diverged image is not averaged in
    rec("ddrm", "r", "a", 23.0, 0.25, 20, 0, 0.1), rec("ddrm", "r", "b", None, None, 20, 0, 0.1, status="diverged"),
    # MCG: dominated by DDRM in every panel
    rec("mcg", "m", "a", 19.0, 0.50, 1000, 1000, 6.0),
    # stale MCG records (older code) are not mixed into the point
    rec("mcg", "m", "b", 99.0, 0.0, 1, 1, 0.01, fp="old", time="2026-01-01T00:00:00Z"),
    # the exact posterior mean: no network, cannot sit on the NFE axis
    rec("oracle_mean", "o", "a", 27.0, 0.15, 0, 0, 0.05),
    # a variant entry of pnp_admm
    rec("pnp_admm_dncnn", "p", "a", 21.0, 0.35, 0, 0, 0.2, solver_class="pnp_admm"),
    # another task: its own figure
    rec("dps", "d1k", "a", 30.0, 0.10, 1000, 1000, 5.0, task="deblur_gaussian"),
]
CONFIGS = {"d100": cfg("dps", num_steps=100, zeta=0.3), "d1k": cfg("dps", num_steps=1000, zeta=0.3),
           "r": cfg("ddrm", num_steps=20), "m": cfg("mcg", num_steps=1000), "o": {}, "p": cfg("pnp_admm")}


def _by(pts, entry, h=None):
    return next(p for p in pts if p.entry == entry and (h is None or p.config_hash == h) and p.task == "sr4")


def test_points_are_per_configuration_means_of_current_ok_records():
    pts = figures.points(RECORDS, CONFIGS)
    d100, d1k = _by(pts, "dps", "d100"), _by(pts, "dps", "d1k")
    assert (d100.psnr, d100.lpips, d100.nfe, d100.seconds, d100.n) == (21.0, pytest.approx(0.35), 200.0, 0.6, 2)
    assert (d1k.psnr, d1k.nfe, d1k.label, d100.label) == (25.0, 2000.0, "num_steps=1000", "num_steps=100")
    ddrm = _by(pts, "ddrm")
    assert (ddrm.psnr, ddrm.n, ddrm.n_failed, ddrm.nfe, ddrm.label) == (23.0, 1, 1, 20.0, "")
    mcg = _by(pts, "mcg")
    assert (mcg.psnr, mcg.n) == (19.0, 1)  # the stale 99 dB record is not averaged in
    assert _by(pts, "pnp_admm_dncnn").solver == "pnp_admm"
    assert len([p for p in pts if p.task == "deblur_gaussian"]) == 1


def test_pareto_front():
    # (cost, quality): 0 and 2 and 4 are on the front; 1 is dominated by 0; 3 by 2
    items = [(1, 10), (2, 9), (3, 12), (4, 12), (5, 13)]
    assert figures.pareto_front(items, higher_is_better=True) == [0, 2, 4]
    assert figures.pareto_front([(1, 0.5), (2, 0.6), (3, 0.2)], higher_is_better=False) == [0, 2]
    assert figures.pareto_front([(1, 5), (1, 7)], higher_is_better=True) == [1]  # equal cost: the better one


def test_colours_are_fixed_per_solver_whatever_else_is_plotted():
    assert figures.solver_colour("dps") == figures.solver_colour("dps", ["zzz", "aaa", "mine"])
    assert figures.solver_colour("spgd") != figures.solver_colour("dps")
    idx = figures.colour_index(["mine"])
    assert idx["dps"] == 0 and idx["mine"] == len(figures.BUILTIN_ORDER)


def test_figure_panels_log_axes_front_and_omitted_zero_cost_points():
    pts = [p for p in figures.points(RECORDS, CONFIGS) if p.task == "sr4"]
    fig = figures.figure("demo", "sr4", pts)
    axes = fig.axes[:4]
    assert [ax.get_xscale() for ax in axes] == ["log"] * 4
    psnr_nfe = axes[0]
    front = [c for c in psnr_nfe.collections if c.get_gid() == "pareto"][0]
    # PSNR vs NFE: ddrm (20 NFE, 23 dB) then dps 1000 steps (2000 NFE, 25 dB); oracle/pnp dncnn have 0 NFE
    assert sorted(map(tuple, np.asarray(front.get_offsets()).tolist())) == [(20.0, 23.0), (2000.0, 25.0)]
    dps = [c for c in psnr_nfe.collections if c.get_gid() == "points:dps"][0]
    assert len(dps.get_offsets()) == 2  # one point per configuration
    psnr_sec = axes[1]
    front = [c for c in psnr_sec.collections if c.get_gid() == "pareto"][0]
    # seconds: the oracle (0.05 s, 27 dB) dominates everything slower
    assert sorted(map(tuple, np.asarray(front.get_offsets()).tolist())) == [(0.05, 27.0)]
    colours = {c.get_gid(): tuple(c.get_facecolor()[0]) for c in psnr_sec.collections if c.get_gid().startswith("points:")}
    assert colours["points:dps"] == figures.solver_colour("dps")
    assert colours["points:pnp_admm_dncnn"] == figures.solver_colour("pnp_admm")
    assert "oracle_mean (nfe = 0)" in fig._supxlabel.get_text()


def test_write_gives_png_and_pdf_per_dataset_and_task(tmp_path):
    files = figures.write(RECORDS, CONFIGS, tmp_path)
    names = sorted(f.name for f in files)
    assert names == ["demo_deblur_gaussian.pdf", "demo_deblur_gaussian.png", "demo_sr4.pdf", "demo_sr4.png"]
    assert (tmp_path / "demo_sr4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "demo_sr4.pdf").read_bytes()[:5] == b"%PDF-"


def test_bench_table_writes_the_figures(tmp_path):
    layout = tables.Layout([("demo", "Demo")], [("sr4", "SR x4"), ("deblur_gaussian", "Deblur")],
                           [("dps", "DPS"), ("ddrm", "DDRM"), ("mcg", "MCG")])
    files = tables.write(RECORDS, CONFIGS, tmp_path, "t", layout)
    assert tmp_path / "figures" / "demo_sr4.pdf" in files and (tmp_path / "figures" / "demo_sr4.png").is_file()
