"""`python -m bench solvers` / `python -m bench tasks` (bench/catalog.py): what exists, read from the registries."""
from __future__ import annotations

import functools

import pytest

import operators
import solvers
from bench import catalog, cli
from solvers.base import resolve_config, solver_class


@functools.lru_cache(maxsize=1)
def tasks() -> list[catalog.TaskInfo]:
    return catalog.task_infos()


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def block(text: str, name: str) -> list[str]:
    """The lines of solver `name`'s block in the overview (its header line up to the next blank line)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}: "))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def test_solvers_lists_every_solver_with_budget_and_sourced_hyper_parameters(capsys):
    code, out, _ = run_cli(capsys, "solvers")
    assert code == 0
    for name in solvers.available():
        assert any(line.startswith(f"{name} ") for line in out.splitlines()), f"{name} missing from the overview"
        budget = solvers.get(name, catalog._probe_prior()).budget()
        assert f"  budget per image: {budget['nfe_forward']} fwd / {budget['nfe_backward']} bwd" in block(out, name)
    lr = resolve_config(solver_class("spgd"), None, None)["lr"]
    assert f"  lr = {lr['value']!r}  [{lr['source']}]" in block(out, "spgd")
    assert lr["source"].startswith("chosen by us")


def test_one_solver_in_full_shows_task_and_dataset_values(capsys):
    code, out, _ = run_cli(capsys, "solvers", "spgd")
    assert code == 0
    cls = solver_class("spgd")
    inpaint = resolve_config(cls, "inpaint_random", None)["lr"]
    ffhq_sr = resolve_config(cls, "sr4", "ffhq")["lr"]
    lines = out.splitlines()
    i = lines.index("  task inpaint_random:")
    assert lines[i + 1] == f"    lr = {inpaint['value']!r}  [{inpaint['source']}]"
    j = lines.index("  dataset ffhq / task sr4:")
    assert lines[j + 1] == f"    lr = {ffhq_sr['value']!r}  [{ffhq_sr['source']}]"
    assert inpaint["value"] == 2.5 and ffhq_sr["value"] == 8.0  # SPGD Table 5
    assert f"smoke overrides: {dict(cls.smoke)}" in out


def test_unknown_solver_is_one_line(capsys):
    code, out, err = run_cli(capsys, "solvers", "no_such_solver")
    assert code == 2 and out == "" and err.count("\n") == 1 and "no_such_solver" in err and "--import" in err


def test_tasks_lists_every_operator_task_with_parameters(capsys):
    code, out, _ = run_cli(capsys, "tasks")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in operators.names()}
    assert set(rows) == set(operators.names())
    assert rows["sr4"].split()[1:5] == ["yes", "yes", "closed", "form"]  # linear, svd, pinv closed form
    assert "factor=4" in rows["sr4"]
    assert rows["deblur_motion"].split()[1:3] == ["yes", "no"]  # linear, no SVD
    assert rows["phase_retrieval"].split()[1:5] == ["no", "-", "-", "-"]
    assert "p_range=(0.8, 0.8)" in rows["inpaint_random"]


def test_solver_tasks_come_from_supports():
    infos = {i.name: i for i in catalog.solver_infos(["ddrm", "dps"], tasks())}
    assert "deblur_motion" not in infos["ddrm"].tasks and "inpaint_random" in infos["ddrm"].tasks  # DDRM needs an SVD
    assert set(catalog.TABLE1_TASKS) <= set(infos["dps"].tasks)


@pytest.mark.parametrize("command", ["check-solver", "solvers", "tasks", "plan"])
def test_new_subcommands_have_help_and_examples(command):
    ap = cli.parser()
    sub = next(a for a in ap._actions if a.dest == "command")
    parser = sub.choices[command]
    assert parser.epilog and "python -m bench" in parser.epilog
    for action in parser._actions:
        if action.dest != "help":
            assert action.help, f"{command} {action.option_strings or action.dest} has no help text"
    assert command in ap.format_help()
