"""`python -m bench check-solver module:Class` (bench/solver_contract.py) on a user's module outside the package.

A correct solver passes every check; one that normalises by the batch mean fails batch independence
(and only that); one whose budget() lies fails the NFE check; a bad `module:Class` is one line
"error: ..." with exit status 2 and no traceback.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import cli

ROOT = Path(__file__).resolve().parents[1]

USER_MODULE = textwrap.dedent('''
    """A user's solvers, outside the package (no `name`: nothing is registered)."""
    from solvers import Solver


    class Good(Solver):
        """x0 of per-image noise at index k: one forward NFE per image."""

        defaults = {"k": {"value": 500, "source": "test"}}

        def budget(self):
            return {"nfe_forward": 1, "nfe_backward": 0}

        def _solve(self, y, A, rng):
            return self.prior.x0(rng.randn(self.prior.image_shape, like=y), self.k)


    class BatchCoupled(Good):
        """Normalises by the mean over the whole batch: image i depends on the others."""

        def _solve(self, y, A, rng):
            x = super()._solve(y, A, rng)
            return x - x.mean()


    class LyingBudget(Good):
        def budget(self):
            return {"nfe_forward": 2, "nfe_backward": 0}


    class NotASolver:
        pass
''')


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    (tmp_path / "usersolvers.py").write_text(USER_MODULE)
    return tmp_path


def check_solver(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bench", "check-solver", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)


def lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_correct_solver_passes_every_check_on_every_table1_task(user_dir):
    proc = check_solver(user_dir, "usersolvers:Good")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed = lines(proc.stdout, "PASS ")
    assert len(passed) == 4 * 4, proc.stdout  # 4 checks x 4 Table 1 tasks
    for task in ("inpaint_random", "deblur_gaussian", "deblur_motion", "sr4"):
        assert f"PASS {task}: image alone == image in a batch" in passed
        assert f"PASS {task}: counted NFE == budget()" in passed
    assert not lines(proc.stdout, "FAIL")


def test_batch_coupled_solver_fails_batch_independence_only(user_dir):
    proc = check_solver(user_dir, "usersolvers.py:BatchCoupled", "--tasks", "inpaint_random,sr4")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = lines(proc.stdout, "FAIL ")
    assert [line.split(":")[0:2] for line in failed] == [["FAIL inpaint_random", " image alone == image in a batch"],
                                                         ["FAIL sr4", " image alone == image in a batch"]], proc.stdout
    assert "differs from its result in a batch of 4" in failed[0]
    assert "PASS inpaint_random: counted NFE == budget()" in proc.stdout


def test_lying_budget_fails_the_nfe_check(user_dir):
    proc = check_solver(user_dir, "usersolvers:LyingBudget", "--tasks", "inpaint_random")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert lines(proc.stdout, "FAIL ") == [
        "FAIL inpaint_random: counted NFE == budget(): counted {'nfe_forward': 4, 'nfe_backward': 0} for 4 images, "
        "budget() {'nfe_forward': 2, 'nfe_backward': 0} per image x 4 = {'nfe_forward': 8, 'nfe_backward': 0}"]


@pytest.mark.parametrize("spec,words", [
    ("no_such_module_xyz:Good", "no_such_module_xyz"),
    ("usersolvers:Missing", "has no class 'Missing'; its Solver subclasses: BatchCoupled, Good, LyingBudget"),
    ("usersolvers:NotASolver", "NotASolver is not a subclass of solvers.Solver"),
    ("usersolvers", "expected module:Class"),
    ("nowhere/file.py:Good", "no file"),
])
def test_bad_module_class_is_one_error_line(user_dir, monkeypatch, capsys, spec, words):
    monkeypatch.chdir(user_dir)
    monkeypatch.setattr(sys, "path", [str(user_dir), *sys.path])
    monkeypatch.setitem(sys.modules, "usersolvers", None)  # absent during the test, forgotten after it
    del sys.modules["usersolvers"]
    assert cli.main(["check-solver", spec]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err, err
