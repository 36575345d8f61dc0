"""Which records make a table row: one configuration made by one version of the code.

A *variant* of a table cell (dataset, task, entry) is a (config hash, code fingerprint) pair. The
current protocol and code ask for one variant per cell (the *selection*, bench.runner.Runner.selection);
`select_rows` keeps those records as the table's rows and describes every other variant in words
("lr 2.5 -> 1.0", "code: solvers/spgd.py changed"), or, with `all_configs`, adds them as labelled
rows of their own. Records of different variants are never merged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Variant = tuple[str, str]  # (config hash, fingerprint)


@dataclass
class Rows:
    records: list[dict]                                # records of the rows shown, `solver` = row id
    methods: list[tuple[str, str]]                     # extra (row id, label) rows, after the layout's
    unranked: set[str] = field(default_factory=set)    # row ids that are not ranked (other variants)
    notes: list[str] = field(default_factory=list)     # "other configurations in the store", in words
    base_method: dict[str, str] = field(default_factory=dict)  # row id -> the protocol entry it belongs to


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def _short(key: str) -> str:
    for head in ("solver.params.", "solver.overrides."):
        if key.startswith(head):
            return key[len(head):]
    return key


def config_difference(current: dict | None, other: dict | None, limit: int = 4) -> list[str]:
    """What differs between two stored configurations, in words: ["lr 2.5 -> 1.0", ...] (current -> other)."""
    if current is None or other is None:
        return ["configuration not stored"]
    a, b = _flat(current), _flat(other)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith("solver.overrides."))
    words = [f"{_short(k)} {a.get(k, '(none)')} -> {b.get(k, '(none)')}" for k in keys]
    return words[:limit] + ([f"and {len(words) - limit} more"] if len(words) > limit else [])


def code_difference(current: dict[str, str] | None, other: dict[str, str] | None) -> str:
    if current is None or other is None:
        return "code: other version"
    changed = sorted(k for k in set(current) | set(other) if current.get(k) != other.get(k))
    shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    return f"code: {shown} changed" if changed else "code: same files"


def _describe(cur: Variant | None, var: Variant, configs: dict, fingerprints: dict) -> str:
    if cur is None:
        return f"config {var[0][:8]}, code {var[1][:8] or '?'}"
    parts = []
    if var[0] != cur[0]:
        parts += config_difference(configs.get(cur[0]), configs.get(var[0]))
    if var[1] != cur[1]:
        parts.append(code_difference(fingerprints.get(cur[1]), fingerprints.get(var[1])))
    return "; ".join(parts) or "same configuration"


def select_rows(records: list[dict], configs: dict[str, dict], selection: dict[tuple[str, str, str], Variant] | None,
                all_configs: bool = False, fingerprints: dict[str, dict] | None = None,
                labels: dict[str, str] | None = None) -> Rows:
    """Split `records` (every version in the store) into the rows of a table.

    `selection` None: the current variant is unknown; a cell with a single variant shows it, a cell with
    several shows all of them as labelled rows (nothing is averaged, nothing hidden)."""
    fingerprints = fingerprints or {}
    labels = labels or {}
    groups: dict[tuple[str, str, str], dict[Variant, list[dict]]] = {}
    for r in records:
        cell = (r["dataset"], r["task"], r["solver"])
        groups.setdefault(cell, {}).setdefault((r["config_hash"], r.get("fingerprint") or ""), []).append(r)
    out = Rows([], [])
    extra: dict[str, str] = {}
    for cell in sorted(groups):
        variants = groups[cell]
        ds, task, entry = cell
        current = selection.get(cell) if selection is not None else None
        if selection is None and len(variants) == 1:
            current = next(iter(variants))
        for var in sorted(variants):
            recs = variants[var]
            if var == current:
                out.records.extend(recs)
                continue
            words = _describe(current, var, configs, fingerprints)
            n = len(recs)
            if all_configs or selection is None:
                row = f"{entry}@{var[0][:8]}.{var[1][:8]}"
                extra[row] = f"{labels.get(entry, entry)} [{words}]"
                out.unranked.add(row)
                out.base_method[row] = entry
                out.records.extend({**r, "solver": row} for r in recs)
                if selection is None:
                    continue
            stale = current is not None and var[0] == current[0]
            what = "stale (made by other code)" if stale else "another configuration"
            shown = "shown as an extra row" if all_configs else "not shown; `bench table --all-configs` shows it"
            out.notes.append(f"{entry} / {ds} / {task}: {n} record{'s' * (n != 1)} of {what}: {words} ({shown})")
    out.methods = sorted(extra.items())
    return out
