"""What exists: the registered solvers and operator tasks (`python -m bench solvers`, `python -m bench tasks`).

A solver's tasks are found by asking it: `solver.supports(A)` on the operator of each task built at
256x256 (seed 0) with the exact Gaussian prior standing in for the network (support depends on the
operator, not on the prior). Its budget is `budget()` with the default hyper-parameters, and each
hyper-parameter comes with its value and source from `solvers.base.resolve_config` (solvers/configs/<name>.yaml
or the class `defaults`). Plain text: the output is meant to be read in a terminal and grepped.
"""
from __future__ import annotations

import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any

import operators
import solvers
from operators.base import _REGISTRY as _OPERATORS
from operators.base import LinearOperator, OperatorError
from solvers.base import _REGISTRY as _SOLVERS
from solvers.base import Solver, load_config, resolve_config

TABLE1_TASKS = ("inpaint_random", "deblur_gaussian", "deblur_motion", "sr4")
IMAGE_SIZE = 256
_BASE_PARAMS = ("image_shape", "sigma_y", "seeds", "shared_params")  # every operator takes these


@dataclass
class TaskInfo:
    """One operator task: its parameters with defaults and what it offers to solvers."""

    name: str
    module: str
    linear: bool
    params: dict[str, Any]  # task-specific keyword parameters -> default (the common ones left out)
    svd: str = "-"  # "yes" / "no" / "-" (non-linear) / "?" (not built)
    pinv: str = "-"  # "closed form" / "no" / "-" / "?"
    prox: str = "-"  # "closed form" / "CG" / "-"
    error: str = ""  # why the operator could not be built here (missing weights, ...)
    operator: operators.Operator | None = field(default=None, repr=False)


@dataclass
class SolverInfo:
    """One registered solver: supported tasks, default budget and hyper-parameters with sources."""

    name: str
    cls: type[Solver]
    tasks: list[str]
    budget: dict[str, int] | str  # the budget, or the error budget() raised
    params: dict[str, tuple[Any, str]]  # name -> (value, source)
    unknown_tasks: list[str] = field(default_factory=list)  # tasks whose operator could not be built here


# ---------------------------------------------------------------------------------------- tasks
def _defaults(task: str) -> dict[str, Any]:
    sig = inspect.signature(_OPERATORS[task].__init__)
    return {k: p.default for k, p in sig.parameters.items()
            if k in operators.parameters(task) and k not in _BASE_PARAMS}


def task_infos(image_size: int = IMAGE_SIZE) -> list[TaskInfo]:
    """Every registered task (`operators.names()`), built at image_size with seed 0 to probe svd/pinv."""
    out = []
    for name in operators.names():
        cls = _OPERATORS[name]
        info = TaskInfo(name=name, module=cls.__module__, linear=bool(cls.is_linear), params=_defaults(name))
        try:
            A = operators.get(name, image_shape=(3, image_size, image_size), seeds=[0])
        except (OperatorError, OSError, RuntimeError, ValueError) as err:
            info.error = str(err).split("\n")[0]
            if info.linear:
                info.svd = info.pinv = "?"
            out.append(info)
            continue
        info.operator = A
        if info.linear:
            info.svd = "yes" if A.has_svd else "no"
            info.prox = "closed form" if cls.prox is not LinearOperator.prox else "CG"
            info.pinv = "closed form" if _has_pinv(A, image_size) else "no"
        out.append(info)
    return out


def _has_pinv(A: operators.Operator, image_size: int) -> bool:
    import torch
    try:
        A.pinv(A(torch.zeros(1, 3, image_size, image_size)))
    except (OperatorError, NotImplementedError):
        return False
    return True


def format_tasks(infos: list[TaskInfo]) -> str:
    rows = [("task", "linear", "svd", "pinv", "prox", "parameters (defaults)")]
    for t in infos:
        params = ", ".join(f"{k}={v!r}" for k, v in t.params.items()) or "-"
        rows.append((t.name, "yes" if t.linear else "no", t.svd, t.pinv, t.prox, params))
    lines = _table(rows)
    notes = [f"  {t.name}: not built here: {t.error}" for t in infos if t.error]
    footer = ["", "Every task also takes image_shape, sigma_y (noise std, [-1, 1] pixel units), seeds (one per "
              "image) and shared_params; build one with operators.get(task, image_shape=(3, H, W), seeds=[...], "
              "sigma_y=0.05, **params). pinv/svd probed on a 256x256 operator; prox 'CG' = conjugate gradients."]
    return "\n".join(lines + (["", "Not probed:"] + notes if notes else []) + footer)


# ---------------------------------------------------------------------------------------- solvers
def _probe_prior() -> Any:
    from priors.gaussian import embedded
    return embedded(IMAGE_SIZE)


def solver_infos(names: list[str] | None = None, tasks: list[TaskInfo] | None = None) -> list[SolverInfo]:
    """Registered solvers (all, or `names`), each probed on every task of `tasks` (default: all tasks)."""
    tasks = task_infos() if tasks is None else tasks
    prior = _probe_prior()
    out = []
    for name in names or solvers.available():
        cls = _SOLVERS[name]
        solver = solvers.get(name, prior)
        try:
            budget: dict[str, int] | str = solver.budget()
        except Exception as err:  # noqa: BLE001 - show it instead of failing the listing
            budget = f"budget() raised {type(err).__name__}: {err}"
        supported, unknown = [], []
        for t in tasks:
            if t.operator is None:
                unknown.append(t.name)
                continue
            try:
                if solvers.get(name, prior, task=t.name).supports(t.operator):
                    supported.append(t.name)
            except Exception:  # noqa: BLE001 - a solver whose config fails for a task does not support it
                pass
        params = {k: (v["value"], v["source"]) for k, v in resolve_config(cls, None, None).items()}
        out.append(SolverInfo(name=name, cls=cls, tasks=supported, budget=budget, params=params,
                              unknown_tasks=unknown))
    return out


def _budget_text(budget: dict[str, int] | str) -> str:
    if isinstance(budget, str):
        return budget
    return f"{budget['nfe_forward']} fwd / {budget['nfe_backward']} bwd"


def _task_text(info: SolverInfo) -> str:
    t1 = [t for t in TABLE1_TASKS if t in info.tasks]
    other = [t for t in info.tasks if t not in TABLE1_TASKS]
    text = f"{len(t1)}/{len(TABLE1_TASKS)} Table 1"
    return text + (f" + {len(other)} more" if other else "")


def format_solvers(infos: list[SolverInfo]) -> str:
    """Overview table, then each solver's tasks and hyper-parameters (value [source])."""
    rows = [("solver", "module", "tasks", "NFE per image (defaults)")]
    rows += [(i.name, i.cls.__module__, _task_text(i), _budget_text(i.budget)) for i in infos]
    lines = _table(rows)
    for i in infos:
        lines += ["", f"{i.name}: {_summary(i.cls)}",
                  f"  tasks: {', '.join(i.tasks) or '-'}"
                  + (f" (not probed: {', '.join(i.unknown_tasks)})" if i.unknown_tasks else ""),
                  f"  budget per image: {_budget_text(i.budget)}"]
        lines += [f"  {k} = {v!r}  [{src}]" for k, (v, src) in i.params.items()]
    lines += ["", "Values per task / dataset: python -m bench solvers NAME. NFE fwd = network evaluations, "
              "bwd = those also back-propagated through (vector-Jacobian products)."]
    return "\n".join(lines)


def format_solver_detail(info: SolverInfo) -> str:
    """One solver in full: docstring summary, tasks, smoke overrides, defaults, and every value a task or
    dataset of its config changes (with the budget of that task / dataset)."""
    cls = info.cls
    lines = [f"{info.name}: {cls.__module__}.{cls.__qualname__} ({inspect.getsourcefile(cls)})",
             *textwrap.wrap(_summary(cls, full=True), 100, initial_indent="  ", subsequent_indent="  "),
             f"tasks: {', '.join(info.tasks) or '-'}"
             + (f" (not probed: {', '.join(info.unknown_tasks)})" if info.unknown_tasks else ""),
             f"smoke overrides: {dict(cls.smoke) or '-'}",
             f"budget per image (defaults): {_budget_text(info.budget)}",
             "", "hyper-parameters (defaults):"]
    lines += _table([("name", "value", "source")] + [(k, repr(v), s) for k, (v, s) in info.params.items()],
                    indent="  ")
    cfg = load_config(info.name) if info.name else {}
    layers = [(f"task {t}", t, None, (entry or {}).get("params")) for t, entry in (cfg.get("tasks") or {}).items()]
    for d, ds in (cfg.get("datasets") or {}).items():
        layers.append((f"dataset {d}", None, d, (ds or {}).get("params")))
        layers += [(f"dataset {d} / task {t}", t, d, (entry or {}).get("params"))
                   for t, entry in ((ds or {}).get("tasks") or {}).items()]
    prior = _probe_prior()
    changes = []
    for where, task, dataset, params in layers:
        if not params:
            continue
        budget = _safe_budget(info.name, prior, task, dataset)
        changes.append(f"  {where}:" + ("" if budget == info.budget else f"  (budget {_budget_text(budget)})"))
        changes += [f"    {k} = {v.get('value')!r}  [{v.get('source')}]" for k, v in params.items()
                    if isinstance(v, dict)]
    lines += ["", f"per task / dataset (solvers/configs/{info.name}.yaml; the most specific wins: params < task < "
                  "dataset < dataset / task < overrides):"]
    lines += changes or ["  (none: the defaults apply everywhere)"]
    return "\n".join(lines)


def _safe_budget(name: str, prior: Any, task: str | None, dataset: str | None) -> dict[str, int] | str:
    try:
        return solvers.get(name, prior, task=task, dataset=dataset).budget()
    except Exception as err:  # noqa: BLE001
        return f"budget() raised {type(err).__name__}: {err}"


def _summary(cls: type, full: bool = False) -> str:
    own = cls.__dict__.get("__doc__")  # not inherited: Solver's own docstring says nothing about cls
    doc = inspect.cleandoc(own) if own else inspect.getdoc(inspect.getmodule(cls)) or ""
    para = doc.split("\n\n")[0] if full else doc.split("\n")[0]
    return " ".join(para.split()) or cls.__name__


def _table(rows: list[tuple[str, ...]], indent: str = "") -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]) - 1)]
    return [indent + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)) + "  " + str(r[-1]) for r in rows]
