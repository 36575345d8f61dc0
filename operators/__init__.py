"""Degradation operators: one module per family, registered by task name (see operators/base.py)."""
import importlib
import pkgutil

from operators.base import LinearOperator, Operator, OperatorError, SVD, get, names, parameters, randn_per_image
from operators.noise import GaussianNoise

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base" and not _m.name.startswith("_"):
        importlib.import_module(f"operators.{_m.name}")

__all__ = ["GaussianNoise", "LinearOperator", "Operator", "OperatorError", "SVD", "get", "names", "parameters",
           "randn_per_image"]
