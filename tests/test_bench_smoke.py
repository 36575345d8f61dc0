"""CI smoke: the shipped smoke protocol end to end through the CLI, over every registered solver
(solvers.available() in a fresh process, each with its `smoke` overrides), on 2 demo images at 32x32 and the exact
Gaussian prior. Numbers are not checked, the plumbing is: every solver gives a record per image
and task, none errors, and the tables and grids are written."""
from __future__ import annotations

import json

import solvers
from bench import store
from test_bench_fakes import cli

TASKS = ["inpaint_random"]  # one task keeps it fast; the runner tests cover the others


def test_smoke_protocol_end_to_end(tmp_path):
    res = tmp_path / "smoke"
    run = cli("run", "--protocol", "smoke", "--results", str(res), "--tasks", ",".join(TASKS))
    assert run.returncode == 0, run.stderr[-3000:]
    table = cli("table", "--protocol", "smoke", "--results", str(res))
    assert table.returncode == 0, table.stderr[-3000:]
    records = store.load_records(res)
    from solvers.base import _REGISTRY
    names = [n for n in solvers.available() if _REGISTRY[n].__module__.startswith("solvers.")]  # not test fakes
    assert {r["solver"] for r in records} == set(names)
    assert len(records) == len(names) * len(TASKS) * 2
    errors = [(r["solver"], r["task"], r["message"]) for r in records if r["status"] == "error"]
    assert not errors, errors
    from priors.gaussian import embedded
    prior = embedded(image_size=32)
    for r in records:
        if r["status"] == "ok":  # counted network calls per image = the solver's documented budget
            assert 0 <= r["ssim"] <= 1 and r["lpips"] >= 0
            budget = solvers.get(r["solver"], prior, task=r["task"], dataset="demo", **_REGISTRY[r["solver"]].smoke).budget()
            assert (r["nfe_forward"], r["nfe_backward"]) == (budget["nfe_forward"], budget["nfe_backward"]), r["solver"]
    md = (res / "table1.md").read_text()
    assert all(f"| {n} |" in md or f"| {n}¹ |" in md for n in names)  # ¹: uses a model besides the prior
    assert (res / "table1.csv").exists() and (res / "table1_cost.md").exists()
    assert sorted(p.name for p in res.glob("grid_*.png")) == [f"grid_demo_{t}.png" for t in sorted(TASKS)]
    configs = store.load_configs(res)
    smoke_params = {r["solver"]: configs[r["config_hash"]]["solver"]["params"] for r in records}
    for name, params in smoke_params.items():  # the smoke overrides really were applied
        for key, value in _REGISTRY[name].smoke.items():
            assert params[key] == json.loads(json.dumps(value)), (name, key)
