"""`bench sweep`: validation split only, harness as the objective (cached, resumable), tuned layer, NFE sweep."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from bench import splits, store, sweep, tables, tuning
from bench.errors import BenchError
from bench.protocol import load
from bench.runner import Runner
from bench.search_space import parse, search_space
from test_bench_fakes import BenchFakeSolver, protocol

ONE_TASK = {"inpaint_random": {"label": "Inpaint", "params": {"p_range": [0.8, 0.8]}}}


class SweepFake(BenchFakeSolver):
    """The fake solver with a search space: x_hat = A^T y + noise * z, so a smaller `noise` scores higher."""
    name = "sweep_fake"
    defaults = {**BenchFakeSolver.defaults, "noise": {"value": 0.3, "source": "chosen by us: test (published)"}}
    search = {"noise": {"kind": "log_uniform", "low": 0.001, "high": 1.0, "source": "chosen by us: test"}}


@pytest.fixture
def tuned_dir(tmp_path, monkeypatch):
    folder = tmp_path / "tuned"
    monkeypatch.setattr(tuning, "TUNED_DIR", folder)
    return folder


def _proto(tmp_path: Path, **extra):
    return load(str(protocol(tmp_path, tasks=ONE_TASK, solvers={"sweep_fake": {"label": "Fake"}}, imports=[], **extra)))


def _quiet(msg: str) -> None:
    pass


def test_objective_parsing_and_scores():
    assert sweep.Objective.parse("PSNR").direction == "maximize"
    assert sweep.Objective.parse("lpips").direction == "minimize"
    o = sweep.Objective.parse("psnr-lpips:20")
    assert o.weight == 20 and o.label == "psnr-lpips:20"
    assert o.per_image({"status": "ok", "psnr": 30.0, "lpips": 0.1}) == pytest.approx(28.0)
    assert o.per_image({"status": "diverged", "psnr": None, "lpips": None}) == pytest.approx(0.0 - 20 * 1.0)
    for bad in ("ssim", "psnr-lpips:", "psnr-lpips:-1", "psnr-lpips:x"):
        with pytest.raises(BenchError, match="use psnr, lpips or psnr-lpips:W"):
            sweep.Objective.parse(bad)
    mean, ci = sweep.mean_ci([1.0, 3.0])
    assert mean == 2.0 and ci == pytest.approx(1.959964 * (2.0 ** 0.5) / 2 ** 0.5)


def test_search_blocks_are_validated():
    known = {"zeta": 1, "steps": 1}
    assert parse("x", {"zeta": {"kind": "log_uniform", "factor": [0.1, 10], "source": "s"}}, known)["zeta"].bounds(0.3) \
        == pytest.approx((0.03, 3.0))
    for block, msg in [({"nope": {"kind": "uniform", "low": 0, "high": 1, "source": "s"}}, "no hyper-parameter 'nope'"),
                       ({"zeta": {"kind": "uniform", "low": 0, "high": 1}}, "needs a source"),
                       ({"zeta": {"kind": "normal", "source": "s"}}, "kind 'normal'"),
                       ({"zeta": {"kind": "log_uniform", "factor": [2, 10], "source": "s"}}, "published value inside"),
                       ({"zeta": {"kind": "log_uniform", "low": 0, "high": 1, "source": "s"}}, "low > 0")]:
        with pytest.raises(BenchError, match=msg):
            parse("x", block, known)
    # the shipped blocks parse and contain each solver's published values
    for name in ("dps", "ddrm", "spgd", "reddiff", "diffpir", "pnp_admm", "mcg", "dpps", "dcdp"):
        assert search_space(name), name


def test_a_sweep_never_runs_on_a_test_manifest(tmp_path, monkeypatch, tuned_dir):
    p = _proto(tmp_path)
    monkeypatch.setitem(splits.VALIDATION_MANIFESTS, "demo", "datasets/demo.json")
    with pytest.raises(BenchError, match="datasets/demo.json is a test manifest"):
        sweep.sweep(p, sweep.Objective.parse("psnr"), 2, 2, tmp_path / "sw", log=_quiet)
    assert not (tmp_path / "sw").exists() and not tuned_dir.exists()


def test_sweep_resumes_from_the_store_and_replays_the_same_trials(tmp_path, tuned_dir):
    p = _proto(tmp_path)
    obj = sweep.Objective.parse("psnr")
    full = sweep.sweep(p, obj, 4, 2, tmp_path / "a", log=_quiet, write_layer=False)[0]
    # a sweep stopped after 2 trials, then rerun with the full budget: the same 4 trials, only 2 computed
    sweep.sweep(p, obj, 2, 2, tmp_path / "b", log=_quiet, write_layer=False)
    assert len(store.load_records(tmp_path / "b", all_versions=True)) == 2 * 2
    resumed = sweep.sweep(p, obj, 4, 2, tmp_path / "b", log=_quiet, write_layer=False)[0]
    assert [(t.params, t.value, t.config_hash) for t in resumed.trials] == \
        [(t.params, t.value, t.config_hash) for t in full.trials]
    assert len(store.load_records(tmp_path / "b", all_versions=True)) == 4 * 2  # nothing computed twice
    # trial 0 is the published value; every trial ran on the validation images only
    assert full.trials[0].params == {"noise": 0.3}
    recs = store.load_records(tmp_path / "a", all_versions=True)
    assert {r["image_id"] for r in recs} == {"prior_sample_00", "prior_sample_01"}
    # the study file holds every trial and the best
    saved = json.loads((tmp_path / "a" / "studies" / "demo" / "inpaint_random" / "sweep_fake.json").read_text())
    assert len(saved["trials"]) == 4 and saved["best"]["value"] == max(t.value for t in full.trials)


def test_tuned_layer_is_written_and_used_only_with_tuning_tuned(tmp_path, tuned_dir):
    p = _proto(tmp_path)
    obj = sweep.Objective.parse("psnr")
    study = sweep.sweep(p, obj, 5, 2, tmp_path / "sw", log=_quiet)[0]
    layer = yaml.safe_load((tuned_dir / "tiny.yaml").read_text())
    entry = layer["sweep_fake"]["demo"]["inpaint_random"]["noise"]
    assert entry["value"] == study.best.params["noise"] and study.best.value > study.trials[0].value
    assert entry["source"].startswith("sweep: datasets/demo_validation.json (2 images), objective psnr, 5 trials")
    assert "+-" in entry["source"]

    def cell(tuning_mode: str):
        q = dataclasses.replace(p, tuning=tuning_mode)
        runner = Runner(q, tmp_path / "res", progress=False, log=_quiet)
        images, priors = runner.preflight()
        return runner.cells(q.datasets[0], q.tasks[0], priors["demo"], runner.metric_object().card())[0]

    published, tuned = cell("published"), cell("tuned")
    assert published.obj.params["noise"] == 0.3 and "tuning" not in published.config
    assert tuned.obj.params["noise"] == entry["value"] and tuned.obj.sources["noise"] == entry["source"]
    assert tuned.config["tuning"] == "tuned" and tuned.config["solver"]["tuned"] == {"noise": entry["source"]}
    assert tuned.config_hash != published.config_hash
    # the published hash is the one a protocol without the key has always had
    q = load(str(protocol(tmp_path, name="tiny2", tasks=ONE_TASK, imports=[], solvers={"sweep_fake": {"label": "Fake"}})))
    assert q.tuning == "published"
    # the footer says which rows used tuned values
    configs = {published.config_hash: published.config, tuned.config_hash: tuned.config}
    recs = [{"solver": "sweep_fake", "config_hash": tuned.config_hash}]
    assert "tuned on the validation split" in tables.tuning_line(recs, configs, {"sweep_fake": "Fake"})
    assert "Fake (noise)" in tables.tuning_line(recs, configs, {"sweep_fake": "Fake"})
    recs = [{"solver": "sweep_fake", "config_hash": published.config_hash}]
    assert "published values" in tables.tuning_line(recs, configs) and "tuned on" not in tables.tuning_line(recs, configs)


def test_entry_overrides_win_over_the_tuned_layer(tmp_path, tuned_dir):
    tuning.update_layer("tiny", {("sweep_fake", "demo", "inpaint_random"): {"noise": {"value": 0.2, "source": "sweep: x"}}})
    p = load(str(protocol(tmp_path, tasks=ONE_TASK, tuning="tuned", imports=[],
                          solvers={"sweep_fake": {"label": "Fake", "overrides": {"noise": 0.05}}})))
    runner = Runner(p, tmp_path / "res", progress=False, log=_quiet)
    _, priors = runner.preflight()
    c = runner.cells(p.datasets[0], p.tasks[0], priors["demo"], runner.metric_object().card())[0]
    assert c.obj.params["noise"] == 0.05 and c.config["solver"]["tuned"] == {}


def test_bad_tuning_value_is_one_line(tmp_path):
    with pytest.raises(BenchError, match=r"tuning: 'best' is not one of published, tuned"):
        load(str(protocol(tmp_path, tuning="best", imports=[])))


def test_nfe_sweep_writes_one_configuration_per_value(tmp_path):
    from bench import figures
    p = load(str(protocol(tmp_path, tasks=ONE_TASK, count=2, imports=[], solvers={"dps": {"label": "DPS"}})))
    cells = sweep.nfe_sweep(p, "num_steps", [3, 6], tmp_path / "res", log=_quiet)
    assert len({c.config_hash for c in cells}) == 2
    recs = store.load_records(tmp_path / "res", all_versions=True)
    pts = figures.points(recs, store.load_configs(tmp_path / "res"))
    assert sorted((p.label, p.nfe) for p in pts) == [("num_steps=3", 6.0), ("num_steps=6", 12.0)]  # fwd + bwd
    with pytest.raises(BenchError, match="expected KEY=V1,V2"):
        sweep.parse_nfe("100,200")


def test_sweep_cli_refuses_bad_input_in_one_line(tmp_path):
    from test_bench_fakes import cli
    r = cli("sweep", "--protocol", "demo", "--solver", "dps", "--task", "sr4", "--objective", "ssim",
            "--results", str(tmp_path / "x"))
    assert r.returncode == 2 and "psnr, lpips or psnr-lpips:W" in r.stderr and "Traceback" not in r.stderr


def test_published_vs_tuned_table_runs_the_test_split_with_both(tmp_path, tuned_dir):
    p = _proto(tmp_path, count=2)
    obj = sweep.Objective.parse("psnr")
    study = sweep.sweep(p, obj, 5, 2, tmp_path / "sw", log=_quiet)[0]
    out = sweep.published_vs_tuned(p, tmp_path / "sw", log=_quiet)
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| demo | inpaint_random | sweep_fake |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[3] == "noise=0.3" and cells[4] == f"noise={study.best.params['noise']}"
    assert cells[5].startswith(f"{study.trials[0].value:.4g}") and cells[6].startswith(f"{study.best.value:.4g}")
    test_recs = store.load_records(tmp_path / "sw" / "test", all_versions=True)
    assert {r["image_id"] for r in test_recs} == {"astronaut", "coffee"}  # the protocol's own (test) images
    assert len({r["config_hash"] for r in test_recs}) == 2
    assert float(cells[8].split()[0]) > float(cells[7].split()[0])  # less noise: higher test PSNR
    assert "equal budget of 5 x 2 solves" in text


def test_parallel_sweeps_keep_every_cell_of_the_layer(tmp_path, tuned_dir):
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_cells, args=(tuned_dir, k)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    layer = yaml.safe_load((tuned_dir / "tiny.yaml").read_text())
    assert sorted(layer) == [f"s{k}" for k in range(4)]
    assert all(len(layer[f"s{k}"]["demo"]) == 20 for k in range(4))
    assert [p.name for p in tuned_dir.iterdir()] == ["tiny.yaml"]


def _write_cells(folder: Path, k: int) -> None:
    for t in range(20):
        tuning.update_layer("tiny", {(f"s{k}", "demo", f"t{t}"): {"x": {"value": t, "source": "sweep: test"}}},
                            directory=folder)
