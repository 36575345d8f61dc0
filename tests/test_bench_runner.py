"""The runner end to end on a tiny protocol: batch invariance, determinism, resume after SIGKILL,
failure records, sharding over 2 processes, and user errors (exit code 2, one message)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import store
from bench.cli import main
from test_bench_fakes import ROOT, cli, protocol

METRIC_KEYS = ("psnr", "ssim", "lpips")


def run_and_table(proto: Path, results: Path, *extra: str) -> bytes:
    assert main(["run", "--protocol", str(proto), "--results", str(results), *extra]) == 0
    assert main(["table", "--protocol", str(proto), "--results", str(results)]) == 0
    return (results / "table1.csv").read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted single-process run with batch size 4 (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("ref")
    proto = protocol(tmp)
    csv = run_and_table(proto, tmp / "res", "--batch-size", "4")
    return proto, tmp / "res", csv


def _record_files(results: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((results / "records").glob("*.jsonl"))}


def _by_key(results: Path) -> dict:
    return {(r["dataset"], r["image_id"], r["task"], r["solver"]): r for r in store.load_records(results)}


def test_batch_size_does_not_change_records_and_rerun_is_byte_identical(reference, tmp_path):
    proto, ref_dir, ref_csv = reference
    ref = _by_key(ref_dir)
    assert len(ref) == 4 * 2 and all(r["status"] == "ok" for r in ref.values())
    csv1 = run_and_table(proto, tmp_path / "bs1", "--batch-size", "1")
    one = _by_key(tmp_path / "bs1")
    assert one.keys() == ref.keys()
    for k, r in ref.items():
        assert one[k]["config_hash"] == r["config_hash"]  # batch size is not part of the configuration
        for m in METRIC_KEYS:
            assert one[k][m] == pytest.approx(r[m], abs=1e-5), (k, m)
        assert one[k]["nfe_forward"] == r["nfe_forward"] == 1
    # a fresh rerun gives the same table, byte for byte
    csv1_again = run_and_table(proto, tmp_path / "bs1_again", "--batch-size", "1")
    assert csv1_again == csv1
    # and the different images / tasks really differ (the seeds are per image and per task)
    psnrs = [r["psnr"] for r in ref.values()]
    assert len(set(psnrs)) == len(psnrs)


def test_rerun_skips_everything(reference, capsys):
    proto, ref_dir, ref_csv = reference
    before = _record_files(ref_dir)
    assert main(["run", "--protocol", str(proto), "--results", str(ref_dir)]) == 0
    assert "skipped 8" in capsys.readouterr().out
    assert _record_files(ref_dir) == before  # nothing written, no new file


def test_resume_after_sigkill_loses_nothing_and_duplicates_nothing(reference, tmp_path):
    proto, _, ref_csv = reference
    res = tmp_path / "res"
    env = {**os.environ, "BENCH_FAKE_SLEEP": "0.4", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--protocol", str(proto), "--results", str(res),
                             "--batch-size", "1"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if sum(v.count(b"\n") for v in _record_files(res).values()) >= 3:
            break
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(store.load_records(res))
    assert 3 <= n_before < 8, "the kill must land part-way through the run"
    csv = run_and_table(proto, res)
    files = _record_files(res)
    assert len(files) == 2  # the killed writer's file and the resuming process's own file
    lines = [json.loads(line) for text in files.values() for line in text.decode().splitlines() if line.strip()]
    keys = [store.record_key(r) for r in lines]
    assert len(keys) == len(set(keys)) == 8  # no duplicate, none lost
    assert csv == ref_csv  # the resumed table equals the uninterrupted one


def test_sharded_run_over_two_processes_equals_single_process(reference, tmp_path):
    proto, _, ref_csv = reference
    res = tmp_path / "res"
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "bench", "run", "--protocol", str(proto), "--results", str(res), "--batch-size", "2"],
                         cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    files = sorted(p.name for p in (res / "records").glob("*.jsonl"))
    assert [f.split("-")[0] for f in files] == ["rank0", "rank1"]  # one file per process, named by rank
    per_rank = [{r["image_id"] for r in map(json.loads, (res / "records" / f).read_text().splitlines())} for f in files]
    assert per_rank[0] and per_rank[1] and not per_rank[0] & per_rank[1]  # disjoint shards
    assert main(["table", "--protocol", str(proto), "--results", str(res)]) == 0
    assert (res / "table1.csv").read_bytes() == ref_csv


def test_diverged_and_unsupported_become_records_and_the_run_goes_on(tmp_path):
    # diverge_below = -0.2: coffee and rocket (mean < -0.2) diverge, astronaut and chelsea do not
    proto = protocol(tmp_path, solvers={"bench_fake": {"label": "Fake", "overrides": {"diverge_below": -0.2}},
                                        "oracle_sample": {"label": "Oracle sample"},
                                        "bench_fake_inpaint_only": {"label": "Inpaint only"}},
                     tasks={"sr4": {"label": "SR", "params": {"factor": 4}}})
    res = tmp_path / "res"
    run_and_table(proto, res, "--batch-size", "4")
    recs = store.load_records(res)
    fake = {r["image_id"]: r for r in recs if r["solver"] == "bench_fake"}
    assert {k: r["status"] for k, r in fake.items()} == {"astronaut": "ok", "chelsea": "ok", "coffee": "diverged",
                                                         "rocket": "diverged"}  # the retry isolates them
    assert all(r["psnr"] is None and "fake divergence" in r["message"] for r in fake.values() if r["status"] == "diverged")
    n_ok = sum(r["status"] == "ok" for r in fake.values())
    md = (res / "table1.md").read_text()
    assert f"({n_ok}/4)" in md
    unsupported = [r for r in recs if r["solver"] == "bench_fake_inpaint_only"]
    assert len(unsupported) == 4 and {r["status"] for r in unsupported} == {"unsupported"}
    assert "| Inpaint only | – | – | – |" in md  # shown as '–', without a failure count
    oracle = [r for r in recs if r["solver"] == "oracle_sample"]
    assert len(oracle) == 4 and all(r["status"] == "ok" and r["nfe_forward"] == 0 for r in oracle)
    # the exact posterior sample of an image does not depend on its batch
    run_and_table(proto, tmp_path / "bs1", "--batch-size", "1", "--solvers", "oracle_sample")
    one = {r["image_id"]: r for r in store.load_records(tmp_path / "bs1") if r["solver"] == "oracle_sample"}
    for r in oracle:
        assert one[r["image_id"]]["psnr"] == pytest.approx(r["psnr"], abs=1e-5)


# ------------------------------------------------------------------------------------ user errors
def _fails_cleanly(args: list[str], capsys, *needles: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error:")
    for n in needles:
        assert n in err, err
    return err


def test_unknown_protocol_solver_task_and_key(tmp_path, capsys):
    _fails_cleanly(["run", "--protocol", "no_such_protocol"], capsys, "unknown protocol", "table1")
    proto = protocol(tmp_path)
    _fails_cleanly(["run", "--protocol", str(proto), "--solvers", "nope"], capsys, "'nope'", "bench_fake")
    bad = protocol(tmp_path, name="badkey", typo_key=1)
    _fails_cleanly(["run", "--protocol", str(bad)], capsys, "typo_key")
    bad_task = protocol(tmp_path, name="badtask", tasks={"nonexistent_task": {"params": {}}})
    _fails_cleanly(["run", "--protocol", str(bad_task), "--results", str(tmp_path / "r")], capsys, "nonexistent_task")
    bad_solver = protocol(tmp_path, name="badsolver", solvers={"not_a_solver": {}})
    _fails_cleanly(["run", "--protocol", str(bad_solver), "--results", str(tmp_path / "r")], capsys, "not_a_solver")


def test_data_problems_are_named_before_any_work(tmp_path, capsys):
    import shutil
    folder = tmp_path / "demo"
    # missing folder
    proto = protocol(tmp_path, name="m1", datasets={"demo": {"prior": "gaussian", "image_size": 32,
                                                              "manifest": "datasets/demo.json", "root": str(folder)}})
    res = tmp_path / "res"
    _fails_cleanly(["run", "--protocol", str(proto), "--results", str(res)], capsys, str(folder), "does not exist")
    # empty folder: every file named missing
    folder.mkdir()
    _fails_cleanly(["run", "--protocol", str(proto), "--results", str(res)], capsys, "4 image(s)", "astronaut.png")
    # a changed file
    shutil.copytree(ROOT / "datasets" / "demo", folder, dirs_exist_ok=True)
    (folder / "coffee.png").write_bytes((folder / "coffee.png").read_bytes() + b"\0")
    _fails_cleanly(["run", "--protocol", str(proto), "--results", str(res)], capsys, "coffee.png differs")
    assert not res.exists()  # nothing was run
    assert main(["data", "check", "--protocol", str(proto)]) == 2


def test_corrupt_and_too_small_images(tmp_path, capsys):
    import hashlib
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "bad.png").write_bytes(b"not a png at all")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"dataset": "x", "images": [
        {"id": "bad", "file": "bad.png", "sha256": hashlib.sha256(b"not a png at all").hexdigest()}]}))
    ds = {"demo": {"prior": "gaussian", "image_size": 32, "manifest": str(manifest), "root": str(folder)}}
    proto = protocol(tmp_path, name="c1", datasets=ds)
    _fails_cleanly(["run", "--protocol", str(proto), "--results", str(tmp_path / "r")], capsys, "bad.png", "cannot decode")
    big = protocol(tmp_path, name="c2", datasets={"demo": {"prior": "gaussian", "image_size": 128,
                                                           "manifest": "datasets/demo.json", "root": "datasets/demo"}})
    _fails_cleanly(["run", "--protocol", str(big), "--results", str(tmp_path / "r2")], capsys, "smaller than", "128")


def test_subprocess_cli_user_error_exit_code():
    out = cli("run", "--protocol", "no_such_protocol")
    assert out.returncode == 2 and "Traceback" not in out.stderr and "unknown protocol" in out.stderr


def test_table1_stops_before_any_work_listing_missing_data_and_checkpoints(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESTOREBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("RESTOREBENCH_CHECKPOINTS", str(tmp_path / "ckpt"))
    (tmp_path / "data" / "ffhq").mkdir(parents=True)
    (tmp_path / "data" / "ffhq" / "00000.png").write_bytes((ROOT / "datasets/demo/rocket.png").read_bytes())
    res = tmp_path / "res"
    err = _fails_cleanly(["run", "--protocol", "table1", "--limit", "2", "--results", str(res)], capsys,
                         "00001.png", str(tmp_path / "data" / "imagenet"), "ffhq_10m.pt", "256x256_diffusion_uncond.pt",
                         "make checkpoints", "datasets/README.md")
    assert "00000.png" not in err.split("missing")[1].split("\n")[0]  # present files are not named missing
    assert not res.exists()
