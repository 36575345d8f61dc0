"""The package layers, read from the source (ast, every import statement including those inside functions):

    common  <-  operators  <-  priors  <-  solvers  <-  bench  <-  benchmarks

A lower layer never imports a higher one (operators/ and priors/ never import solvers/; none of operators/,
priors/, solvers/, common/ imports the harness bench/ or the measurements benchmarks/; common/ imports nothing
of the project), and the benchmarks/ modules import each other without cycles."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("common", "operators", "priors", "solvers", "bench", "benchmarks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, as_module: str | None = None) -> set[str]:
    """Every module named by an import statement in `path` (relative imports resolved against its module name,
    or `as_module`), anywhere in the file, including inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = (as_module or module_name(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return names


def project_imports(path: Path) -> set[str]:
    return {n for n in imported_modules(path) if n.split(".")[0] in PROJECT}


def modules_of(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def top(name: str) -> str:
    return name.split(".")[0]


FORBIDDEN = {
    "common": set(PROJECT) - {"common"},
    "operators": {"priors", "solvers", "bench", "benchmarks"},
    "priors": {"solvers", "bench", "benchmarks"},
    "solvers": {"bench", "benchmarks"},
    "bench": {"benchmarks"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package: str) -> None:
    files = modules_of(package)
    assert files, f"{package}/ has no modules"
    bad = [f"{module_name(f)} imports {name}" for f in files for name in sorted(project_imports(f))
           if top(name) in FORBIDDEN[package]]
    assert bad == [], "upward imports:\n" + "\n".join(bad)


def import_graph(package: str) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (a `from pkg import sub` counts as importing pkg.sub)."""
    files = {module_name(f): f for f in modules_of(package)}
    graph = {}
    for name, path in files.items():
        deps = {n for n in project_imports(path) if n in files and n != name and n != package}
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph as [a, b, ..., a], or None (depth-first search, three colours)."""
    colour = {n: 0 for n in graph}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        colour[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if colour.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if colour.get(m) == 0 and (cycle := visit(m)):
                return cycle
        stack.pop()
        colour[n] = 2
        return None

    for n in sorted(graph):
        if colour[n] == 0 and (cycle := visit(n)):
            return cycle
    return None


def test_find_cycle_finds_the_old_perf_circle_and_accepts_a_tree() -> None:
    old = {"bench.perf": {"bench.perf_precision", "bench.perf_clocks"}, "bench.perf_clocks": set(),
           "bench.perf_precision": {"bench.perf"}}
    assert find_cycle(old) == ["bench.perf", "bench.perf_precision", "bench.perf"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_inside_functions_and_relative_imports_are_seen(tmp_path: Path) -> None:
    assert "common.fileio" in imported_modules(ROOT / "solvers" / "pnp_denoisers.py")
    # the old layering bug, written lazily inside a function, and a relative import: both are found
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from bench.fileio import atomic_write\n    from . import base\n")
    names = imported_modules(probe, as_module="solvers.probe")
    assert {"bench.fileio", "solvers.base"} <= names


def test_benchmarks_have_no_import_cycle() -> None:
    graph = import_graph("benchmarks")
    assert "benchmarks.perf" in graph and "benchmarks.workload" in graph
    assert find_cycle(graph) is None, f"import cycle in benchmarks/: {' -> '.join(find_cycle(graph) or [])}"


def test_nothing_outside_benchmarks_imports_it_and_no_perf_code_is_left_in_the_harness() -> None:
    assert not list((ROOT / "bench").glob("perf*.py")), "performance code belongs in benchmarks/"
    assert not (ROOT / "bench" / "fileio.py").exists(), "file helpers live in common/fileio.py"
