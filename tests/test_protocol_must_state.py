"""Operator parameters a protocol must state (issue 13, item 5): phase retrieval's `variant` defaults to the
DPS form (|F(pad(x))| of the [-1, 1] image) while SPGD / DAPS are tuned for |F(pad((x + 1) / 2))|."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.errors import BenchError
from bench.protocol import PROTOCOL_DIR, load, parse
from operators.base import must_state


def _with_phase_retrieval(params: dict) -> dict:
    raw = yaml.safe_load((PROTOCOL_DIR / "smoke.yaml").read_text())
    raw["tasks"]["phase_retrieval"] = {"label": "Phase retrieval", "params": params, "shared_params": False}
    return raw


def test_phase_retrieval_variant_must_be_stated():
    assert set(must_state("phase_retrieval")) == {"variant"}
    assert must_state("sr4") == {} and must_state("no_such_task") == {}
    with pytest.raises(BenchError, match=r"tasks\.phase_retrieval\.params must state variant: dps .* or spgd / daps"):
        parse(_with_phase_retrieval({}), "p.yaml")
    with pytest.raises(BenchError, match="must state variant"):
        parse(_with_phase_retrieval({"oversample": 2.0}), "p.yaml")
    for variant in ("dps", "spgd"):
        task = parse(_with_phase_retrieval({"variant": variant}), "p.yaml").tasks[-1]
        assert (task.name, task.params) == ("phase_retrieval", {"variant": variant})


def _run_protocols() -> list[Path]:
    """Shipped run protocols (bench/protocol.py schema: datasets x tasks x solvers); the posterior protocols there
    have their own schema (bench/posterior.py, bench/posterior_gmm.py)."""
    return [p for p in sorted(PROTOCOL_DIR.glob("*.yaml")) if {"datasets", "tasks"} <= set(yaml.safe_load(p.read_text()) or {})]


@pytest.mark.parametrize("path", _run_protocols(), ids=lambda p: Path(p).stem)
def test_shipped_protocols_state_what_they_must(path):
    for task in load(str(path)).tasks:
        assert set(must_state(task.name)) <= set(task.params), (path.name, task.name)
