"""The shared part of the posterior protocols' parsing (bench/posterior.py, bench/posterior_gmm.py): known keys
only, and the `smoke:` block laid over the protocol for CI runs (the name gains "-smoke")."""
from __future__ import annotations

from typing import Any

from bench.errors import BenchError


def protocol_fields(raw: Any, source: str, keys: set[str], default_name: str, smoke: bool) -> dict[str, Any]:
    """The protocol's fields (without `smoke`), with the smoke block applied when `smoke`; one-line errors."""
    if not isinstance(raw, dict):
        raise BenchError(f"{source}: expected a mapping of protocol keys")
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise BenchError(f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(keys))}")
    data = {k: v for k, v in raw.items() if k != "smoke"}
    data.setdefault("name", default_name)
    if smoke:
        extra = raw.get("smoke") or {}
        bad = sorted(set(extra) - keys)
        if bad:
            raise BenchError(f"{source}: unknown key(s) in smoke: {', '.join(bad)}")
        data.update(extra)
        data["name"] = f"{raw.get('name', default_name)}-smoke"
        data["smoke"] = True
    return data
