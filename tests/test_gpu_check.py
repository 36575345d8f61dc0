"""benchmarks/gpu_check.py: the harness protocol it builds for a lent GPU is a valid Table 1 protocol on the
random-weight checkpoints it writes, and its report keeps every measured row (no timing here)."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from bench import protocol
from benchmarks import gpu_check
from priors import registry

pytestmark = pytest.mark.usefixtures("one_thread")


def test_harness_protocol_is_table1_on_random_checkpoints(tmp_path):
    path = gpu_check.harness_protocol(tmp_path, full=False)
    p = protocol.load(str(path))
    table1 = protocol.load("table1")
    assert p.smoke is True and p.name == "gpu-check"
    assert p.tasks == table1.tasks  # the Table 1 tasks and their parameters
    assert [s.name for s in p.solvers] == [s.name for s in table1.solvers]
    assert p.metrics["lpips"] == "alex"
    for ds in p.datasets:
        assert ds.count == 2 and ds.image_size == 64
        prior = registry.load(ds.prior, flags=ds.unet)  # loads strictly: the file matches the flags
        assert prior.image_shape == (3, 64, 64)
        eps, _ = prior._model(torch.zeros(1, 3, 64, 64), torch.full((1,), 500.0))
        assert eps.abs().max() > 0  # the zero-initialised output layers were re-drawn
        manifest = json.loads(open(ds.manifest).read())
        for item in manifest["images"]:
            data = (tmp_path / "demo64" / item["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == item["sha256"]


def test_report_keeps_rows_and_failures(tmp_path):
    rep = gpu_check.Report(tmp_path)
    rep.section("network", lambda: rep.add("network", variant="fp32", batch=8, t_fwd_s=0.25))

    def broken() -> None:
        raise RuntimeError("CUDA error: out of memory")

    rep.section("spgd", broken)
    lines = [json.loads(x) for x in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert [r["section"] for r in lines] == ["network", "network", "spgd"]
    assert lines[2]["status"].startswith("failed: RuntimeError: CUDA error: out of memory")
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| fp32 | 8 | 0.25 |" in md and "failed: RuntimeError" in md
