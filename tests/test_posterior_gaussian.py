"""The Gaussian-prior posterior table (bench/posterior.py) and the CLI entry (bench/posterior_cli.py)."""
import math

import numpy as np
import pytest
import torch
import yaml

import operators
from bench import posterior as pgauss
from bench.cli import main as cli_main
from bench.errors import BenchError
from bench.posterior_metrics import coverage, variance_ratio
from bench.store import load_records
from priors.gaussian import embedded



pytestmark = pytest.mark.usefixtures("one_thread")

def _protocol(**kw) -> pgauss.GaussianProtocol:
    raw = {"name": "t", "image_size": 4, "samples": 19, "prior_truths": 2, "directions": 20, "demo": None,
           "tasks": {"inpaint_random": {"params": {"p_range": [0.5, 0.5]}}}, **kw}
    return pgauss.parse_protocol(raw, "test")


def test_posterior_covariance_apply_is_the_exact_posterior_covariance():
    prior = embedded(4)
    A = operators.get("inpaint_random", image_shape=(3, 4, 4), sigma_y=0.05, seeds=[0], p_range=[0.5, 0.5])
    n = 48
    eye = torch.eye(n, dtype=torch.float64).reshape(n, 3, 4, 4)
    cov = prior.posterior_covariance_apply(eye, A, tol=1e-12).reshape(n, n)
    S = prior.cov_apply(eye).reshape(n, n)
    M = A.forward(eye).reshape(n, -1).T
    ref = torch.linalg.inv(torch.linalg.inv(S) + M.T @ M / 0.05**2)
    assert torch.allclose(cov, ref, atol=1e-9)
    var = pgauss.exact_variances(prior, A)
    assert torch.allclose(var.double().reshape(-1), torch.diagonal(ref), rtol=1e-4)  # CG tol 1e-6


def test_oracle_samples_are_calibrated_on_prior_drawn_truths():
    """The exact sampler passes its own coverage (0.90 +- sampling error) and variance ratio 1."""
    # denoising: the oracle's closed-form path (no CG), so 40 measurements stay cheap
    p = _protocol(prior_truths=40, tasks={"denoise": {}})
    prior = pgauss.make_prior(p)
    block = pgauss.truths(p, prior)[0]
    td = pgauss.prepare_task(p, prior, "denoise", block)
    s = pgauss.oracle_samples(prior, td.y, td.A, block.keys, 19, "oracle_sample", p, "denoise")
    cov = [coverage(s[i].reshape(19, -1), block.x[i].reshape(-1)) for i in range(40)]
    ratio = [variance_ratio(s[i].reshape(19, -1), td.exact_var[i].reshape(-1)) for i in range(40)]
    # 40 x 48 pixel indicators, correlated within an image: sd of the mean about 0.01-0.02
    assert abs(np.mean(cov) - 0.90) < 0.04
    assert abs(np.mean(ratio) - 1.0) < 0.08
    assert float(s.abs().max()) <= 10 and prior.data_range is None  # unclipped (clip: false)


def test_run_writes_tables_with_reference_rows_and_is_incremental(tmp_path):
    p = _protocol()
    pgauss.run(p, tmp_path, only=["exact_posterior", "prior_sample", "ddrm"], log=lambda s: None)
    recs = load_records(tmp_path)
    assert {r["solver"] for r in recs} == {"exact_posterior", "prior_sample", "ddrm"} and len(recs) == 6
    rows = {r["solver"]: r for r in pgauss.summarise(p, recs)}
    assert rows["ddrm"]["status"] == "ok" and rows["ddrm"]["nfe"] > 0
    # prior samples ignore y: far from the exact posterior mean, much wider than the posterior
    assert rows["prior_sample"]["variance_ratio"] > 2 * rows["exact_posterior"]["variance_ratio"]
    assert rows["prior_sample"]["mean_error"] > rows["exact_posterior"]["mean_error"]
    md = (tmp_path / "posterior_gaussian.md").read_text()
    assert "*exact posterior sample*" in md and "| ddrm |" in md
    assert "coverage" in (tmp_path / "metric_card.json").read_text()
    log = []
    pgauss.run(p, tmp_path, only=["exact_posterior", "prior_sample", "ddrm"], log=log.append)
    assert log == []
    # a row the protocol excludes later leaves the tables, though its records stay stored
    p.exclude = [*p.exclude, "ddrm"]
    pgauss.write_tables(p, tmp_path)
    assert "| ddrm |" not in (tmp_path / "posterior_gaussian.md").read_text()
    assert ",ddrm," not in (tmp_path / "posterior_gaussian.csv").read_text() and len(load_records(tmp_path)) == 6


def test_bad_protocols_are_one_line_errors():
    with pytest.raises(BenchError, match="19, 39"):
        _protocol(samples=16)
    with pytest.raises(BenchError, match="unknown task"):
        _protocol(tasks={"nope": {}})
    with pytest.raises(BenchError, match="unknown key"):
        _protocol(colour="red")


def test_cli_refuses_an_image_protocol(capsys):
    assert cli_main(["posterior", "--protocol", "demo"]) == 2
    assert "not a posterior protocol" in capsys.readouterr().err


def test_protocol_files_parse_in_both_sizes():
    for smoke in (False, True):
        g = pgauss.parse_protocol(yaml.safe_load(open("bench/protocols/posterior-gaussian.yaml")), "g", smoke)
        assert g.samples == 19 and set(g.tasks) <= set(operators.names())
    assert math.isfinite(float(g.sigma_y))


def test_operators_that_cannot_be_built_fail_at_parse_time():
    with pytest.raises(BenchError, match="tasks.deblur_motion: deblur_motion: kernel_size must be >= 54"):
        _protocol(image_size=16, tasks={"deblur_motion": {"params": {"kernel_size": 9, "intensity": 0.5}}})
