"""Quality-versus-cost figures from the records alone (written by `bench table` into <results>/figures/).

Per dataset and task, one figure of four panels: PSNR and LPIPS against the network evaluations per image
(NFE = forward + backward) and against seconds per image, log-scale cost axes. One point per solver entry and
per configuration of it in the store (an NFE sweep, `bench sweep --nfe`, or other configurations shown by
`--all-configs`): configurations of one entry are joined by a thin line in cost order. The Pareto front
(no other point is both cheaper and better) is drawn as a dashed step line and its points ringed in black.
Colours are fixed per registered solver across every figure (BUILTIN_ORDER, then other names sorted); an
entry that is a variant of a solver (pnp_admm_dncnn) has its solver's colour and another marker. Points
with zero cost (exact oracles: 0 NFE) cannot sit on a log axis and are listed under the figure instead.

Written as PNG (screens) and PDF (vector, for papers), with matplotlib's object API (no pyplot state).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

#: colour order of the built-in solvers (stable across runs and figures); other names follow, sorted
BUILTIN_ORDER = ("dps", "dpps", "mcg", "scoresde", "ddrm", "diffpir", "pnp_admm", "reddiff", "spgd", "dcdp",
                 "oracle_mean", "oracle_sample")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
METRICS = (("psnr", "PSNR (dB)", True), ("lpips", "LPIPS", False))  # (key, axis label, higher is better)
COSTS = (("nfe", "NFE per image (forward + backward)"), ("seconds", "seconds per image"))


@dataclass(frozen=True)
class Point:
    dataset: str
    task: str
    entry: str            # the table row (protocol entry)
    solver: str           # the registered solver it runs
    config_hash: str
    label: str            # what distinguishes this configuration from the entry's others ("" when alone)
    nfe: float
    seconds: float
    psnr: float
    lpips: float | None
    n: int                # images with status ok
    n_failed: int

    def cost(self, kind: str) -> float:
        return self.nfe if kind == "nfe" else self.seconds

    def metric(self, key: str) -> float | None:
        return self.psnr if key == "psnr" else self.lpips


def colour_index(names: Iterable[str]) -> dict[str, int]:
    """Solver name -> palette index: BUILTIN_ORDER first, then the other names sorted."""
    others = sorted(set(names) - set(BUILTIN_ORDER))
    return {name: i for i, name in enumerate((*BUILTIN_ORDER, *others))}


def solver_colour(solver: str, names: Iterable[str] = ()) -> tuple[float, float, float, float]:
    from matplotlib import colormaps
    palette = colormaps["tab20"]
    index = colour_index({solver, *names})[solver]
    return tuple(palette(index % 20))  # type: ignore[return-value]


def _flat_params(config: dict | None) -> dict[str, Any]:
    return dict(((config or {}).get("solver") or {}).get("params") or {})


def points(records: list[dict], configs: dict[str, dict]) -> list[Point]:
    """One point per (dataset, task, entry, config hash): the means over its images with status ok, from the
    records of its newest code fingerprint only (stale records are not mixed in)."""
    groups: dict[tuple[str, str, str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["task"], r["solver"], r["config_hash"]), []).append(r)
    newest: dict[tuple, list[dict]] = {}
    for key, recs in groups.items():
        by_fp: dict[str, list[dict]] = {}
        for r in recs:
            by_fp.setdefault(r.get("fingerprint") or "", []).append(r)
        newest[key] = max(by_fp.values(), key=lambda rs: max(str(r.get("time") or "") for r in rs))
    # labels: the solver parameters that differ between the configurations of one entry
    hashes: dict[tuple[str, str, str], list[str]] = {}
    for ds, task, entry, h in newest:
        hashes.setdefault((ds, task, entry), []).append(h)
    out = []
    for (ds, task, entry, h), recs in sorted(newest.items()):
        ok = [r for r in recs if r["status"] == "ok"]
        if not ok:
            continue
        siblings = hashes[(ds, task, entry)]
        label = ""
        if len(siblings) > 1:
            params = {s: _flat_params(configs.get(s)) for s in siblings}
            keys = sorted({k for p in params.values() for k in p
                           if len({repr(q.get(k)) for q in params.values()}) > 1})
            mine = params[h]
            label = ", ".join(f"{k}={mine.get(k)}" for k in keys) or h[:8]
        n = len(ok)
        lp = [r["lpips"] for r in ok if r.get("lpips") is not None]
        out.append(Point(ds, task, entry, str(ok[0].get("solver_class") or entry), h, label,
                         nfe=sum((r.get("nfe_forward") or 0) + (r.get("nfe_backward") or 0) for r in ok) / n,
                         seconds=sum(r.get("seconds") or 0 for r in ok) / n,
                         psnr=sum(r["psnr"] for r in ok) / n, lpips=sum(lp) / len(lp) if lp else None,
                         n=n, n_failed=len(recs) - n))
    return out


def pareto_front(items: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the (cost, quality) pairs that no other pair dominates (cheaper-or-equal and
    better-or-equal, one of them strictly), in increasing cost."""
    order = sorted(range(len(items)), key=lambda i: (items[i][0], -items[i][1] if higher_is_better else items[i][1]))
    front, best = [], None
    for i in order:
        q = items[i][1]
        if best is None or (q > best if higher_is_better else q < best):
            front.append(i)
            best = q
    return front


def figure(dataset: str, task: str, pts: list[Point], names: Iterable[str] = (), title: str = "") -> Any:
    """The four-panel matplotlib Figure of one (dataset, task)."""
    from matplotlib.figure import Figure
    names = set(names) | {p.solver for p in pts}
    fig = Figure(figsize=(11, 8.5), layout="constrained")
    axes = fig.subplots(2, 2)
    entries = sorted({p.entry for p in pts})
    marker_of: dict[str, str] = {}
    for solver in sorted({p.solver for p in pts}):
        variants = sorted({p.entry for p in pts if p.solver == solver}, key=lambda e: (e != solver, e))
        for k, e in enumerate(variants):
            marker_of[e] = MARKERS[k % len(MARKERS)]
    omitted: set[str] = set()
    for row, (mkey, mlabel, higher) in enumerate(METRICS):
        for col, (ckey, clabel) in enumerate(COSTS):
            ax = axes[row][col]
            shown = [p for p in pts if p.metric(mkey) is not None and p.cost(ckey) > 0]
            omitted |= {f"{p.entry} ({ckey} = 0)" for p in pts if p.metric(mkey) is not None and p.cost(ckey) <= 0}
            for e in entries:
                mine = sorted((p for p in shown if p.entry == e), key=lambda p: p.cost(ckey))
                if not mine:
                    continue
                colour = solver_colour(mine[0].solver, names)
                xs, ys = [p.cost(ckey) for p in mine], [p.metric(mkey) for p in mine]
                if len(mine) > 1:
                    ax.plot(xs, ys, "-", color=colour, linewidth=0.8, alpha=0.7)
                ax.scatter(xs, ys, color=colour, marker=marker_of[e], s=36, zorder=3, label=e, gid=f"points:{e}")
                for p in mine:
                    if p.label:
                        ax.annotate(p.label, (p.cost(ckey), p.metric(mkey)), fontsize=6, xytext=(3, 3),
                                    textcoords="offset points")
            front = pareto_front([(p.cost(ckey), p.metric(mkey)) for p in shown], higher)  # type: ignore[misc]
            if front:
                fx = [shown[i].cost(ckey) for i in front]
                fy = [shown[i].metric(mkey) for i in front]
                ax.step(fx, fy, where="post", linestyle="--", color="0.3", linewidth=1.0, zorder=2,
                        gid="pareto-line")
                ax.scatter(fx, fy, facecolors="none", edgecolors="black", s=110, linewidths=1.2, zorder=4,
                           gid="pareto")
            if shown:
                ax.set_xscale("log")
            ax.set_xlabel(clabel)
            ax.set_ylabel(mlabel + ("" if higher else " (lower is better)"))
            ax.grid(True, which="both", linewidth=0.3, alpha=0.5)
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, title="solver", title_fontsize=8)
    foot = "Pareto front: dashed, ringed points (cheaper and better than every other)."
    if omitted:
        foot += " Not on the log axes: " + ", ".join(sorted(omitted)) + "."
    fig.suptitle(title or f"{dataset} / {task}: quality vs cost")
    fig.supxlabel(foot, fontsize=7)
    return fig


def write(records: list[dict], configs: dict[str, dict], out_dir: Path,
          labels: dict[tuple[str, str], str] | None = None) -> list[Path]:
    """figures/<dataset>_<task>.png and .pdf for every (dataset, task) with a scored record; returns the
    files. `labels`: (dataset, task) -> a figure title."""
    pts = points(records, configs)
    names = {p.solver for p in pts}
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for ds, task in sorted({(p.dataset, p.task) for p in pts}):
        fig = figure(ds, task, [p for p in pts if p.dataset == ds and p.task == task], names,
                     (labels or {}).get((ds, task), ""))
        for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
            path = out_dir / f"{ds}_{task}.{ext}"
            fig.savefig(path, format=ext, dpi=110, metadata=meta)
            written.append(path)
    return written
