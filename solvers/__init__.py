"""Solvers: one file per solver, each registered by subclassing `Solver` (see solvers/base.py)."""
import importlib
import pkgutil

from solvers.base import RNG, Solver, SolverDiverged, SolverError, UnsupportedTask, available, get

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in {"base"} and not _m.name.startswith("_"):
        importlib.import_module(f"solvers.{_m.name}")

__all__ = ["RNG", "Solver", "SolverDiverged", "SolverError", "UnsupportedTask", "available", "get"]
