"""The edit-run-compare loop never mixes results: a table row is one configuration made by one version of
the code (other configurations are listed, or shown labelled with --all-configs), editing a solver's code
makes its records stale and reruns them, `--set` / `--import` / `--solvers` work from the command line, a
name clash with a built-in solver is an error, speed switches are configurations of their own, and an
out-of-memory batch backs off to records identical to a batch-1 run."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from bench import store
from bench.cli import main
from test_bench_fakes import ROOT, cli, protocol

ONE_TASK = {"sr4": {"label": "SR x4", "params": {"factor": 4}}}


def run(proto: Path, res: Path, *extra: str) -> None:
    assert main(["run", "--protocol", str(proto), "--results", str(res), *extra]) == 0


def table(proto: Path, res: Path, *extra: str) -> tuple[str, list[dict]]:
    assert main(["table", "--protocol", str(proto), "--results", str(res), *extra]) == 0
    rows = list(csv.DictReader(io.StringIO((res / "table1.csv").read_text())))
    return (res / "table1.md").read_text(), rows


def psnr_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["metric"] == "psnr"]


# ------------------------------------------------------------------------------ two configurations
def test_two_configurations_in_one_store_are_two_rows_never_an_average(tmp_path, capsys):
    proto = protocol(tmp_path, tasks=ONE_TASK, solvers={"bench_fake": {"label": "Fake", "overrides": {"noise": 0.01}}})
    res = tmp_path / "res"
    run(proto, res)
    run(proto, res, "--set", "bench_fake.noise=0.5")  # another setting into the same folder
    recs = store.load_records(res, all_versions=True)
    assert len(recs) == 8 and len({r["config_hash"] for r in recs}) == 2
    configs = store.load_configs(res)
    changed = {r["config_hash"]: configs[r["config_hash"]]["solver"] for r in recs}
    assert sorted(c["params"]["noise"] for c in changed.values()) == [0.01, 0.5]
    assert any(c["overrides"] == {"noise": 0.5} for c in changed.values())  # recorded as an override

    # the protocol as written asks for noise 0.01: one row, its 4 images, the other configuration listed
    md, rows = table(proto, res)
    (row,) = psnr_rows(rows)
    assert row["n"] == "4" and row["n_total"] == "4"
    mine = [r for r in recs if r["config_hash"] == row["config_hash"]]
    assert {r["solver"] for r in mine} == {"bench_fake"} and len(mine) == 4
    assert configs[row["config_hash"]]["solver"]["params"]["noise"] == 0.01
    expected = sum(r["psnr"] for r in mine) / 4
    assert float(row["mean"]) == pytest.approx(expected, abs=1e-6)
    assert "## Demo (4 images)" in md
    assert "noise 0.01 -> 0.5" in md and "--all-configs" in md  # what differs, in words

    # --set on the table selects the other configuration
    md2, rows2 = table(proto, res, "--set", "bench_fake.noise=0.5")
    (row2,) = psnr_rows(rows2)
    assert row2["config_hash"] != row["config_hash"] and row2["n"] == "4"
    assert "noise 0.5 -> 0.01" in md2

    # --all-configs: both, as separate labelled rows, each of 4 images
    md3, rows3 = table(proto, res, "--all-configs")
    both = psnr_rows(rows3)
    assert len(both) == 2 and {r["n"] for r in both} == {"4"}
    assert {r["config_hash"] for r in both} == {r["config_hash"] for r in recs}
    assert "| Fake [noise 0.01 -> 0.5] |" in md3
    assert "## Demo (4 images)" in md3
    capsys.readouterr()


def test_set_is_typed_and_validated(tmp_path, capsys):
    proto = protocol(tmp_path, tasks=ONE_TASK)
    for bad, needle in ((["--set", "bench_fake.nosuchkey=1"], "no hyper-parameter 'nosuchkey'"),
                        (["--set", "bench_fake.noise=abc"], "expected a value like 0.01"),
                        (["--set", "nosolver.noise=1"], "no solver 'nosolver'"),
                        (["--set", "noise=1"], "SOLVER.KEY=VALUE")):
        assert main(["run", "--protocol", str(proto), "--results", str(tmp_path / "r"), *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and needle in err and err.count("\n") == 1, err


# ------------------------------------------------------------------------------ code edits
SOLVER_SOURCE = '''
from solvers.base import Solver

class MineSolver(Solver):
    name = "mine_user_solver"
    defaults = {{"scale": {{"value": 1.0, "source": "chosen by us: test"}}}}

    def budget(self):
        return {{"nfe_forward": 1, "nfe_backward": 0}}

    def _solve(self, y, A, rng):
        x = A.adjoint(y) * {factor}
        self.prior.denoise(x, 0.1)
        return x
'''


def test_editing_a_user_solver_makes_its_records_stale_and_reruns_them(tmp_path):
    module = tmp_path / "user_mod" / "mine_user_module.py"
    module.parent.mkdir()
    module.write_text(SOLVER_SOURCE.format(factor="1.0"))
    proto = protocol(tmp_path, tasks=ONE_TASK)
    res = tmp_path / "res"
    args = ["run", "--protocol", str(proto), "--results", str(res), "--import", str(module),
            "--solvers", "mine_user_solver"]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert "ok 4" in first.stdout
    before = {r["image_id"]: r for r in store.load_records(res)}
    again = cli(*args)
    assert "ok 0" in again.stdout and "skipped 4" in again.stdout  # nothing changed: nothing rerun

    module.write_text(SOLVER_SOURCE.format(factor="0.5"))  # the researcher edits the solver
    edited = cli(*args)
    assert edited.returncode == 0, edited.stderr
    assert "ok 4" in edited.stdout and "skipped 0" in edited.stdout
    assert f"4 records of mine_user_solver stale: {module.resolve()} changed" in edited.stderr
    after = {r["image_id"]: r for r in store.load_records(res)}
    assert {r["config_hash"] for r in after.values()} == {r["config_hash"] for r in before.values()}
    assert all(after[i]["fingerprint"] != before[i]["fingerprint"] for i in after)
    assert all(after[i]["psnr"] != before[i]["psnr"] for i in after)
    # the table shows the current code's records only, and names the stale ones
    tab = cli("table", "--protocol", str(proto), "--results", str(res), "--import", str(module),
              "--solvers", "mine_user_solver")
    assert tab.returncode == 0, tab.stderr
    rows = psnr_rows(list(csv.DictReader(io.StringIO((res / "table1.csv").read_text()))))
    assert len(rows) == 1 and rows[0]["n"] == "4"
    assert float(rows[0]["mean"]) == pytest.approx(sum(r["psnr"] for r in after.values()) / 4, abs=1e-6)
    md = (res / "table1.md").read_text()
    assert "4 records of stale (made by other code)" in md and "mine_user_module.py changed" in md


def test_fingerprint_follows_a_solver_and_its_shared_modules_only():
    import operators
    import solvers
    from bench.fingerprint import fingerprint
    from priors.gaussian import embedded
    prior = embedded(image_size=16)
    A = operators.get("sr4", image_shape=(3, 16, 16), seeds=[0], sigma_y=0.05)
    spgd = fingerprint(solvers.get("spgd", prior), prior, A)
    dps = fingerprint(solvers.get("dps", prior), prior, A)
    for files in (spgd.files, dps.files):
        assert {"solvers/base.py", "priors/gaussian.py", "priors/base.py", "operators/super_resolution.py",
                "bench/metrics.py", "bench/data.py", "bench/seeding.py"} <= set(files)
    assert "solvers/spgd.py" in spgd.files and "solvers/dps.py" not in spgd.files
    assert "solvers/dps.py" in dps.files and "solvers/ddpm_steps.py" in dps.files
    assert "bench/runner.py" not in spgd.files and "bench/tables.py" not in spgd.files  # bookkeeping
    assert spgd.digest != dps.digest
    assert spgd.changed_files(dict(spgd.files, **{"solvers/spgd.py": "0" * 64})) == ["solvers/spgd.py"]


def test_rerun_all_and_errors(tmp_path, capsys):
    proto = protocol(tmp_path, tasks=ONE_TASK)
    res = tmp_path / "res"
    run(proto, res)
    capsys.readouterr()
    run(proto, res, "--rerun", "errors")
    assert "ok 0" in capsys.readouterr().out  # no error records: nothing to rerun
    run(proto, res, "--rerun", "all")
    assert "ok 4" in capsys.readouterr().out
    assert len(store.load_records(res)) == 4  # recomputed, still one current record per image


# ------------------------------------------------------------------------------ --import / clash
def test_import_runs_a_solver_outside_the_package_and_a_clash_is_an_error(tmp_path):
    module = tmp_path / "clash_module.py"
    module.write_text("from solvers.base import Solver\n\nclass Mine(Solver):\n    name = 'spgd'\n")
    proto = protocol(tmp_path, tasks=ONE_TASK)
    out = cli("run", "--protocol", str(proto), "--results", str(tmp_path / "r"), "--import", str(module),
              "--solvers", "spgd")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error:") and "clashes with the built-in solver" in out.stderr
    assert "give your solver another `name`" in out.stderr
    out = cli("run", "--protocol", str(proto), "--results", str(tmp_path / "r"), "--import", "no_such_module_xyz")
    assert out.returncode == 2 and "cannot import module 'no_such_module_xyz'" in out.stderr
    assert "Traceback" not in out.stderr


# ------------------------------------------------------------------------------ external models
def test_demo_pnp_admm_uses_the_prior_and_the_dncnn_row_is_footnoted(tmp_path):
    from bench import protocol as proto_mod
    demo = proto_mod.load("demo")
    entries = {s.name: s for s in demo.solvers}
    assert entries["pnp_admm"].overrides == {"denoiser": "prior"} and entries["pnp_admm"].solver_name == "pnp_admm"
    assert entries["pnp_admm_dncnn"].solver_name == "pnp_admm"
    assert entries["pnp_admm_dncnn"].overrides == {"denoiser": "dncnn"}
    res = tmp_path / "demo"
    out = cli("run", "--protocol", "demo", "--results", str(res), "--limit", "1", "--tasks", "sr4",
              "--solvers", "pnp_admm,pnp_admm_dncnn")
    assert out.returncode == 0, out.stderr
    out = cli("table", "--protocol", "demo", "--results", str(res), "--tasks", "sr4",
              "--solvers", "pnp_admm,pnp_admm_dncnn")
    assert out.returncode == 0, out.stderr
    md = (res / "table1.md").read_text()
    configs = store.load_configs(res)
    ext = {r["solver"]: configs[r["config_hash"]]["solver"]["external_models"] for r in store.load_records(res)}
    assert ext["pnp_admm"] == {} and "DnCNN" in ext["pnp_admm_dncnn"]["denoiser"]
    assert "| PnP-ADMM (prior denoiser) |" in md  # the main row: the protocol's prior, no mark
    assert "| PnP-ADMM (DnCNN)¹ |" in md
    assert "- ¹ PnP-ADMM (DnCNN) uses a model besides the protocol's prior: denoiser: DnCNN" in md


# ------------------------------------------------------------------------------ speed switches
def test_speed_switches_are_configurations_and_never_merge(tmp_path, capsys):
    ds = {"demo": {"label": "Demo", "prior": "tests.test_bench_fakes:tiny_adm", "image_size": 32,
                   "manifest": "datasets/demo.json", "root": "datasets/demo", "count": 2}}
    proto = protocol(tmp_path, tasks=ONE_TASK, datasets=ds)
    res = tmp_path / "res"
    run(proto, res)
    run(proto, res, "--precision", "bf16", "--channels-last")
    recs = store.load_records(res, all_versions=True)
    assert len({r["config_hash"] for r in recs}) == 2 and len(recs) == 4
    configs = store.load_configs(res)
    speeds = sorted(configs[r["config_hash"]]["speed"]["precision"] for r in recs)
    assert speeds == ["bf16", "bf16", "fp32", "fp32"]
    md, rows = table(proto, res, "--precision", "bf16", "--channels-last")
    (row,) = psnr_rows(rows)
    assert row["n"] == "2" and configs[row["config_hash"]]["speed"]["precision"] == "bf16"
    assert "precision=bf16" in md and "speed.precision bf16 -> fp32" in md
    capsys.readouterr()


# ------------------------------------------------------------------------------ out of memory
def test_out_of_memory_backs_off_to_records_identical_to_a_batch_1_run(tmp_path, monkeypatch, capsys):
    ds = {"demo": {"label": "Demo", "prior": "tests.test_bench_fakes:oom_gaussian", "image_size": 32,
                   "manifest": "datasets/demo.json", "root": "datasets/demo", "count": 4}}
    proto = protocol(tmp_path, tasks=ONE_TASK, datasets=ds, batch_size=4)
    monkeypatch.setenv("BENCH_FAKE_OOM_ABOVE", "1")  # any batch of more than 1 image "runs out of memory"
    run(proto, tmp_path / "oom")
    err = capsys.readouterr().err
    assert "out of memory at batch 4" in err and "retrying at batch 2" in err and "retrying at batch 1" in err
    assert err.count("out of memory at batch 4") == 1  # the smaller batch is kept for the next batches
    oom = {r["image_id"]: r for r in store.load_records(tmp_path / "oom")}
    assert len(oom) == 4 and {r["status"] for r in oom.values()} == {"ok"}
    assert {r["batch_size"] for r in oom.values()} == {1}  # the batch actually used
    monkeypatch.delenv("BENCH_FAKE_OOM_ABOVE")
    run(proto, tmp_path / "bs1", "--batch-size", "1")
    one = {r["image_id"]: r for r in store.load_records(tmp_path / "bs1")}
    for i, r in oom.items():
        assert r["config_hash"] == one[i]["config_hash"]
        assert (r["psnr"], r["ssim"], r["lpips"]) == (one[i]["psnr"], one[i]["ssim"], one[i]["lpips"])


def test_out_of_memory_at_batch_1_is_an_error_record_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    ds = {"demo": {"label": "Demo", "prior": "tests.test_bench_fakes:oom_gaussian", "image_size": 32,
                   "manifest": "datasets/demo.json", "root": "datasets/demo", "count": 2}}
    proto = protocol(tmp_path, tasks=ONE_TASK, datasets=ds, batch_size=2,
                     solvers={"bench_fake": {"label": "Fake"}, "oracle_mean": {"label": "Oracle"}})
    monkeypatch.setenv("BENCH_FAKE_OOM_ABOVE", "0")
    run(proto, tmp_path / "res")
    recs = store.load_records(tmp_path / "res")
    fake = [r for r in recs if r["solver"] == "bench_fake"]
    assert len(fake) == 2 and all(r["status"] == "error" and "out of memory at batch 1" in r["message"] for r in fake)
    assert all(r["status"] == "ok" for r in recs if r["solver"] == "oracle_mean")  # the run went on
    capsys.readouterr()


def test_writer_files_are_unique_per_process(tmp_path):
    from bench.store import writer_name
    a = writer_name(0)
    assert a.startswith("rank0-") and str(__import__("os").getpid()) in a
    proto = protocol(tmp_path, tasks=ONE_TASK, count=2)
    res = tmp_path / "res"
    for _ in range(2):
        out = cli("run", "--protocol", str(proto), "--results", str(res), "--rerun", "all")
        assert out.returncode == 0, out.stderr
    files = sorted((res / "records").glob("*.jsonl"))
    assert len(files) == 2  # a second launch never appends to the first one's file
    assert all(len(f.read_text().splitlines()) == 2 for f in files)
    assert json.loads(files[0].read_text().splitlines()[0])["fingerprint"]
