"""Code fingerprints: which version of the code made a record.

A record's configuration hash says *what* was asked for (hyper-parameters, operator, prior, metrics);
its fingerprint says *which code* computed it. The fingerprint of a table cell is the SHA-256 over the
files of every module that can change its numbers:

* the solver class's module and the modules of its base classes,
* the prior's and the operator's class modules,
* the metric, data-loading and seeding code of the harness (bench/metrics.py, bench/data.py, bench/seeding.py),

each followed through the project (or user) modules it imports. Imports are read from the source
(`ast`), resolved to source files (the loaded module's, else found on sys.path without importing, so
the fingerprint does not depend on what a process happened to import), and followed only into files
outside the Python installation (the repository and user modules: third-party packages are pinned by the
environment, not fingerprinted). `from pkg.mod import x` follows `pkg.mod` (and `pkg.mod.x` when that is
a module), never the package `pkg` itself, so editing solvers/dps.py leaves SPGD's fingerprint alone.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import sys
import sysconfig
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from bench.protocol import REPO_ROOT

#: harness modules whose code decides numbers (images, seeds, scores)
HARNESS_MODULES = ("bench.metrics", "bench.data", "bench.seeding")
#: bookkeeping modules imported by those that never change a number (the protocol schema, error class)
BOOKKEEPING = frozenset({"bench.protocol", "bench.errors"})


@dataclass(frozen=True)
class Fingerprint:
    digest: str
    files: dict[str, str] = field(default_factory=dict)  # display path -> sha256 of the file

    def changed_files(self, other: "Fingerprint | dict[str, str]") -> list[str]:
        """Files that differ (changed, added or removed) between this fingerprint and `other`'s files."""
        theirs = other.files if isinstance(other, Fingerprint) else dict(other)
        return sorted(k for k in set(self.files) | set(theirs) if self.files.get(k) != theirs.get(k))


@lru_cache(maxsize=1)
def _library_roots() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    roots = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return tuple(Path(p).resolve() for p in roots if p)


def _is_library(path: Path) -> bool:
    if "site-packages" in path.parts or "dist-packages" in path.parts:
        return True
    try:
        path.relative_to(REPO_ROOT)
        return False
    except ValueError:
        pass
    return any(path.is_relative_to(root) for root in _library_roots())


@lru_cache(maxsize=None)
def _source_on_path(name: str, search: tuple[str, ...]) -> Path | None:
    rel = Path(*name.split("."))
    for entry in search:
        base = Path(entry or ".")
        for candidate in (base / rel.with_suffix(".py"), base / rel / "__init__.py"):
            if candidate.is_file():
                return candidate.resolve()
        if (base / rel.parts[0]).is_dir() or (base / f"{rel.parts[0]}.py").is_file():
            return None  # the top-level package lives here, and this name is not a source file in it
    return None


def _module_file(name: str) -> Path | None:
    """The source file of module `name`: the loaded module's, else found on sys.path (without importing it,
    so the result does not depend on what this process happened to import); None for libraries."""
    f = getattr(sys.modules.get(name), "__file__", None)
    path = Path(f).resolve() if f else _source_on_path(name, tuple(sys.path))
    if path is None or path.suffix != ".py":
        return None
    return None if _is_library(path) else path


def display_path(path: Path) -> str:
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


@lru_cache(maxsize=None)
def _file_sha(path: Path, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_sha(path: Path) -> str:
    st = path.stat()
    return _file_sha(path, st.st_mtime_ns, st.st_size)


def _imported_modules(name: str, path: Path) -> frozenset[str]:
    """Module names that `name`'s source imports (those with a source file outside the libraries)."""
    st = path.stat()
    return _imports_of(name, path, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=None)
def _imports_of(name: str, path: Path, mtime_ns: int, size: int) -> frozenset[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return frozenset()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                base_parts = base_parts[:len(base_parts) - (node.level - 1)] if node.level > 1 else base_parts
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            subs = [f"{base}.{a.name}" if base else a.name for a in node.names]
            modules = [m for m in subs if _module_file(m) is not None]
            out.update(modules)
            if base and len(modules) < len(subs):  # names defined in `base` itself
                out.add(base)
    return frozenset(m for m in out if _module_file(m) is not None)


def module_closure(roots: Iterable[str]) -> dict[str, Path]:
    """Every non-library module reachable from `roots` through imports: name -> file."""
    seen: dict[str, Path] = {}
    stack = [r for r in roots]
    while stack:
        name = stack.pop()
        if name in seen or name in BOOKKEEPING:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = path
        stack.extend(sorted(_imported_modules(name, path) - set(seen)))
    return seen


def class_modules(*objs: object) -> list[str]:
    """Modules defining the classes of `objs` (instances or classes) and their bases."""
    out: list[str] = []
    for obj in objs:
        if obj is None:
            continue
        cls = obj if inspect.isclass(obj) else type(obj)
        for c in cls.__mro__:
            if c.__module__ not in ("builtins",) and c.__module__ not in out:
                out.append(c.__module__)
    return out


def fingerprint(*objs: object, extra_modules: Iterable[str] = HARNESS_MODULES) -> Fingerprint:
    """The code fingerprint of the classes of `objs` (solver, prior, operator ...) plus `extra_modules`."""
    closure = module_closure([*class_modules(*objs), *extra_modules])
    files = {display_path(p): file_sha(p) for p in closure.values()}
    text = "\n".join(f"{k}:{v}" for k, v in sorted(files.items()))
    return Fingerprint(hashlib.sha256(text.encode()).hexdigest()[:16], files)
