"""The contract every registered solver must keep (solvers/base.py), on the exact Gaussian prior.

The checks live in bench/solver_contract.py (also behind `python -m bench check-solver`); this file runs
them parametrised over `solvers.available()` x the Table 1 tasks, so a new solver is covered as soon as
its module lands. Each solver runs with its `smoke` overrides on 3x32x32 images:
* output finite, of the image shape, in [-1, 1];
* counted NFE (prior.nfe after solve) = solver.budget() per image x batch;
* same generators -> bit-identical output; image i alone = image i in a batch of 4 (per-image generators
  and per-image operator seeds), to 1e-5;
* registry: a Solver subclass defined here is returned by `solvers.get` and listed; unknown solver /
  hyper-parameter -> SolverError naming it; unsupported task -> UnsupportedTask.
"""
from __future__ import annotations

import functools

import pytest
import torch

import solvers
import solvers.base as solver_base
from bench import solver_contract as contract
from solvers import Solver, SolverError, UnsupportedTask

TABLE1_TASKS = contract.TABLE1_TASKS
SHAPE = (3, contract.IMAGE_SIZE, contract.IMAGE_SIZE)
BATCH = contract.BATCH
ALONE = contract.ALONE


def prior():
    return contract.gaussian_prior(SHAPE[-1])


def operator(task: str, seeds: list[int]):
    return contract.operator(task, seeds, SHAPE)


@functools.lru_cache(maxsize=None)
def measurement(task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) for images 0..BATCH-1, image i drawn and measured from its own seed."""
    return contract.measurement(prior(), task, BATCH)


def factory(name: str):
    return contract.class_factory(solver_base._REGISTRY[name])


def smoke_solver(name: str, task: str) -> Solver:
    return factory(name)(prior(), task)


def supported(name: str, task: str) -> bool:
    return contract.supported(factory(name), prior(), task)


@functools.lru_cache(maxsize=None)
def batch_run(name: str, task: str) -> contract.BatchRun:
    """Solve the batch twice with the same generators; record outputs and counted NFE."""
    return contract.batch_run(factory(name), prior(), task, measurement(task)[1])


ALL_CASES = [(name, task) for name in solvers.available() for task in TABLE1_TASKS]
CASES = [case for case in ALL_CASES if supported(*case)]
UNSUPPORTED = [case for case in ALL_CASES if not supported(*case)]


@pytest.mark.parametrize("name,task", CASES)
def test_output_finite_shaped_in_range(name, task):
    result = contract.check_output(batch_run(name, task), (BATCH, *SHAPE), task)
    assert result.ok, f"{name}/{result.name}: {result.message}"


@pytest.mark.parametrize("name,task", CASES)
def test_counted_nfe_equals_budget(name, task):
    result = contract.check_nfe(batch_run(name, task), BATCH, task)
    assert result.ok, f"{name}/{result.name}: {result.message}"


@pytest.mark.parametrize("name,task", CASES)
def test_same_generators_bit_identical(name, task):
    result = contract.check_determinism(batch_run(name, task), task)
    assert result.ok, f"{name}/{result.name}: {result.message}"


@pytest.mark.parametrize("name,task", CASES)
def test_image_alone_equals_image_in_batch(name, task):
    _, y = measurement(task)
    alone = contract.solve_alone(factory(name), prior(), task, y, ALONE)
    result = contract.check_batch_independence(batch_run(name, task).first, alone, task, ALONE)
    assert result.ok, f"{name}/{result.name}: {result.message}"


@pytest.mark.parametrize("name,task", UNSUPPORTED or [pytest.param("", "", marks=pytest.mark.skip("none"))])
def test_unsupported_task_raises(name, task):
    _, y = measurement(task)
    with pytest.raises(UnsupportedTask, match=name):
        smoke_solver(name, task).solve(y, operator(task, list(range(BATCH))))


@pytest.mark.parametrize("name", solvers.available())
def test_unknown_hyper_parameter_is_named(name):
    with pytest.raises(SolverError, match="no_such_knob"):
        solvers.get(name, prior(), task="inpaint_random", no_such_knob=1)


def test_unknown_solver_is_named():
    with pytest.raises(SolverError, match="no_such_solver"):
        solvers.get("no_such_solver", prior())


def test_every_solver_has_a_budget_and_sources():
    for name in solvers.available():
        solver = smoke_solver(name, "inpaint_random")
        budget = solver.budget()
        assert set(budget) == {"nfe_forward", "nfe_backward"}, name
        assert all(isinstance(v, int) and v >= 0 for v in budget.values()), (name, budget)
        assert all(isinstance(s, str) and s for s in solver.sources.values()), (name, solver.sources)


def test_user_defined_solver_registers(monkeypatch):
    monkeypatch.setattr(solver_base, "_REGISTRY", dict(solver_base._REGISTRY))

    class AdjointOnly(Solver):
        """A^T y: no network; only inpainting (to exercise UnsupportedTask)."""

        name = "test_adjoint_only"
        tasks = ("inpaint_random",)
        defaults = {"gain": {"value": 1.0, "source": "chosen by us: test"}}

        def budget(self):
            return {"nfe_forward": 0, "nfe_backward": 0}

        def _solve(self, y, A, rng):
            return self.gain * A.adjoint(y)

    assert "test_adjoint_only" in solvers.available()
    solver = solvers.get("test_adjoint_only", prior(), task="inpaint_random", gain=0.5)
    assert isinstance(solver, AdjointOnly) and solver.gain == 0.5 and solver.sources["gain"] == "override"
    x, y = measurement("inpaint_random")
    A = operator("inpaint_random", list(range(BATCH)))
    assert torch.equal(solver.solve(y, A), (0.5 * A.adjoint(y)).clamp(-1, 1))
    with pytest.raises(UnsupportedTask, match="sr4"):
        solver.solve(measurement("sr4")[1], operator("sr4", list(range(BATCH))))
    with pytest.raises(SolverError, match="gian"):
        solvers.get("test_adjoint_only", prior(), gian=2.0)
