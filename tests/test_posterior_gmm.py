"""The GMM posterior benchmark (bench/posterior_gmm.py, spec gmm-benchmark.md Variant M) and its prior."""
import json
import math

import pytest
import torch
import yaml

import operators
import solvers
from bench import posterior_gmm as pg
from bench.store import load_records
from priors.explicit_schedule import ExplicitSchedule, adapted_timesteps, mcgdiff_gmm_schedule
from priors.gmm import GMMPrior
from priors.gmm_vector import VectorGMMPrior


pytestmark = pytest.mark.usefixtures("one_thread")

SPEC_20 = [0, 6, 13, 20, 28, 36, 45, 55, 66, 78, 92, 108, 127, 151, 182, 226, 299, 510, 755, 999]
SPEC_100 = (list(range(0, 65, 2)) + list(range(67, 104, 3)) + list(range(107, 132, 4))
            + [136, 141, 146, 151, 156, 162, 168, 174, 181, 188, 196, 204, 213, 223, 233, 244, 257, 271, 287, 306,
               328, 355, 389, 436, 508, 656, 673, 689, 705, 722, 738, 754, 771, 787, 803, 820, 836, 852, 869, 885,
               901, 918, 934, 950, 967, 983, 999])


def test_schedule_values_of_the_spec():
    sch = mcgdiff_gmm_schedule()
    ab = {t: float(sch.abar(t - 1)) for t in (0, 1, 10, 50, 100, 500, 999)}  # our k = t - 1
    assert ab[0] == 1.0 and ab[1] == pytest.approx(0.98, abs=1e-12)
    assert ab[10] == pytest.approx(0.8178, abs=1e-4) and ab[50] == pytest.approx(0.3734, abs=1e-4)
    assert ab[100] == pytest.approx(0.1467, abs=1e-4) and ab[500] == pytest.approx(5.15e-4, rel=1e-3)
    assert ab[999] == pytest.approx(4.08e-5, rel=1e-3)


def test_adapted_grids_equal_the_spec_lists():
    assert len(SPEC_100) == 100
    assert adapted_timesteps(mcgdiff_gmm_schedule(), 20) == SPEC_20
    assert adapted_timesteps(mcgdiff_gmm_schedule(), 100) == SPEC_100


def test_respaced_schedule_visits_exactly_the_adapted_grid():
    grid, sch = pg.cell_schedule(20)
    full = mcgdiff_gmm_schedule()
    assert sch.num_steps == 19
    expect = torch.stack([full.abar(t - 1) for t in grid[1:]])
    assert torch.allclose(sch.alphas_cumprod, expect, rtol=1e-12)
    assert float(sch.abar(-1)) == 1.0
    from solvers.ddpm_steps import timesteps
    assert [grid[k + 1] for k in timesteps(19, sch.num_steps)] == SPEC_20[:0:-1]  # 999 -> ... -> 6, then t = 0
    with pytest.raises(ValueError, match="strictly increasing"):
        full.respaced([3, 3])
    assert isinstance(ExplicitSchedule.from_betas([0.1, 0.2]), ExplicitSchedule)


def test_vector_mixture_equals_the_general_mixture_denoiser_and_posterior():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(25, generator=g, dtype=torch.float64)
    vec = VectorGMMPrior.grid25(6, w)
    gen = GMMPrior(w, vec.means, None, image_shape=(1, 1, 6))
    x = 10 * torch.randn(5, 1, 1, 6, generator=g, dtype=torch.float64)
    sigma = 3 * torch.rand(5, generator=g, dtype=torch.float64)
    assert torch.allclose(vec.denoise(x, sigma), gen.denoise(x, sigma), atol=1e-10)
    mat = torch.randn(3, 6, generator=g, dtype=torch.float64)
    A = operators.get("dense", image_shape=(1, 1, 6), sigma_y=0.4, matrix=mat)
    y = 5 * torch.randn(2, 3, generator=g, dtype=torch.float64)
    post = vec.posterior(y, A)
    w_ref, m_ref, P_ref = gen.posterior(y, mat, sigma_y=0.4)
    assert torch.allclose(post.weights, w_ref, atol=1e-12) and torch.allclose(post.means, m_ref, atol=1e-10)
    mean_ref = (w_ref[..., None] * m_ref).sum(1)
    var_ref = (w_ref[..., None] * (torch.diagonal(P_ref, dim1=-2, dim2=-1) + m_ref**2)).sum(1) - mean_ref**2
    assert torch.allclose(post.variance(), var_ref, atol=1e-10)


def test_exact_posterior_matches_brute_force_importance_sampling_in_2d():
    g = torch.Generator().manual_seed(1)
    prior = VectorGMMPrior.grid25(2, torch.rand(25, generator=g, dtype=torch.float64))
    A = operators.get("dense", image_shape=(1, 1, 2), sigma_y=2.0, matrix=torch.tensor([[0.6, 0.3]]))
    y = torch.tensor([[4.0]], dtype=torch.float64)
    x = prior.sample(400_000, g, dtype=torch.float64).reshape(-1, 2)
    logw = -0.5 * ((y - x @ torch.tensor([[0.6], [0.3]], dtype=torch.float64)) ** 2).sum(1) / 4.0
    w = torch.softmax(logw, 0)
    is_mean = (w[:, None] * x).sum(0)
    is_var = (w[:, None] * (x - is_mean) ** 2).sum(0)
    post = prior.posterior(y, A)
    assert torch.allclose(post.mean()[0], is_mean, atol=0.1)
    assert torch.allclose(post.variance()[0], is_var, rtol=0.05)
    s = post.samples(200_000, g)[0]  # the sampler draws the same distribution
    assert torch.allclose(s.mean(0), is_mean, atol=0.1)


def test_problems_follow_the_spec_draws_and_seeds():
    assert pg.spec_seed(800, 1, 20, 0) == 1 and pg.spec_seed(8, 4, 100, 3) == 4 * 9 * 5 + 3
    prior = VectorGMMPrior.grid25(8)
    a, b = pg.make_problem(prior, 8, 4, seed=7), pg.make_problem(prior, 8, 4, seed=7)
    assert torch.equal(a.y, b.y) and a.sigma_y == b.sigma_y
    s = a.A.singular_values[0]
    assert bool((s[:-1] >= s[1:]).all()) and 0 < float(s.max()) < 1 and 0 < a.sigma_y < float(s.max())


def test_solvers_see_unclipped_data_on_the_mixture_prior():
    p = pg.parse_protocol(yaml.safe_load(open("bench/protocols/posterior-gmm.yaml")), "gmm", smoke=True)
    data = pg.prepare_cell(p, pg.Cell(8, 2, 20))
    prob = data.problems[0]
    s = solvers.get("ddrm", data.prior, task="dense", **pg.solver_overrides(p, "ddrm", 20))
    out = s.solve(prob.y.float().expand(300, -1).contiguous(), prob.A, torch.Generator().manual_seed(0))
    assert float(out.abs().max()) > 5  # means reach +-16: nothing clamped to [-1, 1]


def test_smoke_protocol_every_solver_has_a_row_and_reruns_are_incremental(tmp_path):
    raw = yaml.safe_load(open("bench/protocols/posterior-gmm.yaml"))
    p = pg.parse_protocol(raw, "posterior-gmm.yaml", smoke=True)
    assert (p.dims, p.problems, p.steps) == ([8], 2, [20])
    p.measurement_dims = [2]  # one cell keeps the test short; the CLI smoke runs all three
    pg.run(p, tmp_path, log=lambda s: None)
    recs = load_records(tmp_path)
    names = (set(solvers.available()) - set(p.exclude)) | set(pg.REFERENCE_ROWS)
    assert p.exclude == ["hypir"]  # the trained restorer is not a posterior sampler; every other solver runs
    assert {r["solver"] for r in recs} == names and len(recs) == 2 * len(names)
    assert {r["status"] for r in recs} <= {"ok", "unsupported", "error", "diverged"}
    rows = {r["solver"]: r for r in pg.summarise(p, recs)}
    assert rows["exact_posterior"]["sw_mean"] < rows["prior_sample"]["sw_mean"]
    assert rows["dps"]["status"] == "ok" and rows["dps"]["nfe_forward"] == 19  # every index of the grid
    assert (tmp_path / "posterior_gmm.md").read_text().count("| *exact posterior sample") == 1
    # a second run finds everything current and computes nothing
    log = []
    pg.run(p, tmp_path, log=log.append)
    assert log == [] and len(load_records(tmp_path)) == len(recs)
    # only the named rows are recomputed when asked
    pg.run(p, tmp_path, only=["ddrm"], rerun=True, log=log.append)
    assert len(log) == 1 and "ddrm" in log[0]
    assert math.isfinite(rows["ddrm"]["sw_mean"])


def test_share_rows_balances_recorded_seconds():
    from bench.posterior_cli import share_rows

    groups = share_rows(["a", "b", "c", "d", "e"], {"a": 10.0, "b": 6.0, "c": 4.0, "d": 1.0}, 2)
    assert sorted(sum(groups, [])) == ["a", "b", "c", "d", "e"]  # every row exactly once
    assert groups == [["a", "c"], ["b", "e", "d"]]  # e weighs the median (6): loads 14 and 13
    assert share_rows(["a", "b"], {}, 8) == [["a"], ["b"]]  # never more jobs than rows


def test_jobs_give_the_same_table_as_one_process(tmp_path):
    from bench.cli import main as cli_main

    raw = yaml.safe_load(open("bench/protocols/posterior-gmm.yaml"))
    raw.update(dims=[8], measurement_dims=[2], problems=2, steps=[20], samples=200, directions=50)
    proto = tmp_path / "gmm-small.yaml"
    proto.write_text(yaml.safe_dump(raw))
    rows = "exact_posterior,prior_sample,dps,ddrm"
    for jobs, out in ((2, tmp_path / "two"), (1, tmp_path / "one")):
        args = ["posterior", "--protocol", str(proto), "--out", str(out), "--solvers", rows, "--jobs", str(jobs)]
        assert cli_main(args) == 0
    two = (tmp_path / "two" / "posterior_gmm.csv").read_text().splitlines()
    one = (tmp_path / "one" / "posterior_gmm.csv").read_text().splitlines()
    sw = lambda lines: [line.split(",")[:8] for line in lines]  # noqa: E731  (cell, solver, status, SW, n)
    assert sw(two) == sw(one) and len(two) == 1 + 4
    timing = json.loads((tmp_path / "two" / "timing.json").read_text())["last_run"]
    assert timing["jobs"] == 2 and sorted(sum(timing["rows_per_job"], [])) == sorted(rows.split(","))
    assert sorted(timing["seconds_by_solver_this_run"]) == sorted(["(exact posterior references)", *rows.split(",")])
    assert not list((tmp_path / "two").glob(".job*"))  # the workers' timing files are merged and removed


def test_tables_leave_out_rows_the_protocol_now_excludes(tmp_path):
    raw = yaml.safe_load(open("bench/protocols/posterior-gmm.yaml"))
    p = pg.parse_protocol(raw, "posterior-gmm.yaml", smoke=True)
    p.measurement_dims, p.samples, p.directions = [1], 100, 20
    pg.run(p, tmp_path, only=["exact_posterior", "ddrm"], log=lambda s: None)
    assert "| ddrm |" in (tmp_path / "posterior_gmm.md").read_text()
    p.exclude = [*p.exclude, "ddrm"]
    pg.write_tables(p, tmp_path)
    assert "| ddrm |" not in (tmp_path / "posterior_gmm.md").read_text()
    assert ",ddrm," not in (tmp_path / "posterior_gmm.csv").read_text()
    assert {r["solver"] for r in load_records(tmp_path)} == {"exact_posterior", "ddrm"}  # records stay stored
