"""Gradient diagnostics of likelihood-guided solvers (SPGD paper §3.2 and Fig. 2; issue #16 part C).

A solver that applies a likelihood gradient reports each gradient through the observer hook of
`solvers.base.Solver` (`observe("likelihood_step", step=, inner=, sigma= or k=, x=, grad=,
prior_direction=)`, see its docstring). `GradientRecorder` is such an observer: it turns the events
into one row per image and event with

* `conflict_deg`  = angle(-grad, prior_direction): the likelihood DESCENT direction (the update the
  likelihood step applies, up to a positive step size) against the denoiser's update at the same point
  (D(x) - x, or its DDPM equivalent x0_hat - x_k / sqrt(abar_k)). 90 deg = orthogonal (no conflict),
  > 90 deg = the two updates pull against each other, < 90 deg = they agree. This is the paper's
  "gradient conflict" (Fig. 2, blue): its decomposition x_{t-1} = c x_t + g_d - zeta g_l compares the
  denoising update g_d with the likelihood update -zeta g_l. (The angle to +grad is 180 - conflict_deg.)
* `fluctuation_deg` = angle(grad, previous grad of the same image): the paper's temporal consistency of
  the likelihood gradient (Fig. 2, orange). The previous gradient is the previous event, i.e. the
  previous warm-up step inside a warm-up loop (`inner` > 0) or the last gradient of the previous outer
  step (`inner` = 0).
* `prior_fluctuation_deg` = the same for the prior direction (Fig. 2, green).
* `update_fluctuation_deg`: the same for the direction actually applied (`managed`, e.g. SPGD's ADM
  momentum m_j, DCDP's heavy-ball buffer; `update` is read as a synonym), only when the solver reports one
  that is not the gradient tensor itself.
* `grad_norm`, `prior_norm` (and `update_norm`): Euclidean norms per image, in the solver's own
  variable and scaling (they compare steps of one run, not solvers).

Angles are computed in float64; a zero vector gives NaN. Nothing here runs a solver loop: the recorder
only reads what the solver computed anyway (no NFE, no random draw), so outputs and NFE counts are the
same with and without it (tests/test_diagnostics.py).

`summarize` gives the median and quartiles over images per (step, inner); `plot` draws them in the style
of the paper's Fig. 2 (PNG + PDF); `write_csv` writes the per-image rows.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from solvers.base import Solver

Tensor = torch.Tensor

EVENT = "likelihood_step"

#: built-in solvers that report `likelihood_step` events (tests/test_diagnostics.py checks each one does);
#: a user's solver opts in with a class attribute `emits_likelihood_steps = True`
GRADIENT_SOLVERS: frozenset[str] = frozenset({"dps", "dpps", "mcg", "spgd", "dcdp", "reddiff", "daps", "pigdm"})

COLUMNS: tuple[str, ...] = ("image", "event", "step", "inner", "sigma", "k", "conflict_deg", "fluctuation_deg",
                            "prior_fluctuation_deg", "update_fluctuation_deg", "grad_norm", "prior_norm",
                            "update_norm")

#: the CSV header's first lines: which vectors are compared (written as '# ' comments)
CSV_NOTE = (
    "conflict_deg = angle(-grad, prior_direction): likelihood descent direction vs the denoiser's update "
    "(D(x)-x; DDPM: x0_hat - x_k/sqrt(abar_k)) at the same point; >90 = they pull against each other",
    "fluctuation_deg = angle(grad_t, grad_prev) between consecutive likelihood gradients of one image "
    "(inner>0: previous warm-up step; inner=0: last gradient of the previous outer step)",
    "prior_fluctuation_deg / update_fluctuation_deg: the same for the prior direction / the applied update "
    "(e.g. ADM momentum); norms are Euclidean per image in the solver's own variable",
)


def emits_likelihood_steps(solver: type[Solver] | Solver) -> bool:
    """Whether a solver (class or instance) reports likelihood gradients to observers."""
    cls = solver if isinstance(solver, type) else type(solver)
    return bool(getattr(cls, "emits_likelihood_steps", False)) or cls.name in GRADIENT_SOLVERS


def angle_deg(a: Tensor, b: Tensor) -> Tensor:
    """Per-row angle in degrees between a and b, shape (B,) float64 (rows flattened); NaN where either is 0."""
    a = a.detach().reshape(a.shape[0], -1).double()
    b = b.detach().reshape(b.shape[0], -1).double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(1) / (na * nb)
    cos = torch.where((na > 0) & (nb > 0), cos.clamp(-1, 1), torch.full_like(cos, float("nan")))
    return torch.rad2deg(torch.arccos(cos))


def _norms(v: Tensor) -> Tensor:
    return v.detach().reshape(v.shape[0], -1).double().norm(dim=1)


def _nan(n: int) -> Tensor:
    return torch.full((n,), float("nan"), dtype=torch.float64)


@dataclass
class GradientRecorder:
    """Observer collecting `likelihood_step` events into per-image rows (module docstring).

    `image_ids`: the label of each batch row (default 0..B-1); `schedule`: a `VPSchedule` to convert
    DDPM indices `k` to the VE noise level sigma_k = sqrt((1 - abar_k) / abar_k) when an event gives
    no sigma."""

    image_ids: Sequence[Any] | None = None
    schedule: Any = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    _prev: dict[str, Tensor] = field(default_factory=dict)
    _count: int = 0

    def __call__(self, event: str, **q: Any) -> None:
        if event != EVENT:
            return
        grad: Tensor = q["grad"]
        B = grad.shape[0]
        prior = q.get("prior_direction")
        update = q.get("managed", q.get("update"))
        if update is not None and _same_tensor(update, grad):  # e.g. ADM off: the applied direction is grad
            update = None
        conflict = angle_deg(-grad, prior) if prior is not None else _nan(B)
        fluct = self._against_previous("grad", grad)
        prior_fluct = self._against_previous("prior", prior) if prior is not None else _nan(B)
        update_fluct = self._against_previous("update", update) if update is not None else _nan(B)
        g_norm = _norms(grad)
        p_norm = _norms(prior) if prior is not None else _nan(B)
        u_norm = _norms(update) if update is not None else _nan(B)
        sigma, k = self._noise_level(q)
        ids = list(self.image_ids) if self.image_ids is not None else list(range(B))
        if len(ids) != B:
            raise ValueError(f"GradientRecorder: {len(ids)} image ids for a batch of {B}")
        for i in range(B):
            self.rows.append({
                "image": ids[i], "event": self._count, "step": int(q.get("step", 0)),
                "inner": int(q.get("inner", 0)), "sigma": sigma, "k": k,
                "conflict_deg": float(conflict[i]), "fluctuation_deg": float(fluct[i]),
                "prior_fluctuation_deg": float(prior_fluct[i]), "update_fluctuation_deg": float(update_fluct[i]),
                "grad_norm": float(g_norm[i]), "prior_norm": float(p_norm[i]), "update_norm": float(u_norm[i])})
        self._count += 1

    def _against_previous(self, key: str, v: Tensor) -> Tensor:
        prev = self._prev.get(key)
        v64 = v.detach().reshape(v.shape[0], -1).double().cpu()
        out = angle_deg(v64, prev) if prev is not None and prev.shape == v64.shape else _nan(v.shape[0])
        self._prev[key] = v64
        return out

    def _noise_level(self, q: dict[str, Any]) -> tuple[float, float]:
        k = _scalar(q.get("k"))
        sigma = _scalar(q.get("sigma"))
        if math.isnan(sigma) and not math.isnan(k) and self.schedule is not None:
            ab = float(self.schedule.abar(torch.tensor(k, dtype=torch.float64)))
            sigma = math.sqrt((1 - ab) / ab)
        return sigma, k


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    """Whether a and b view the same memory (a solver passing its gradient again as the applied update)."""
    return a.shape == b.shape and a.data_ptr() == b.data_ptr() and a.stride() == b.stride()


def _scalar(v: Any) -> float:
    """A noise level given as a number or a tensor (the first entry of a per-image tensor); NaN if absent."""
    if v is None:
        return float("nan")
    if isinstance(v, Tensor):
        return float(v.detach().flatten()[0])
    return float(v)


def record(solver: Solver, y: Tensor, A: Any, generator: Any = None,
           image_ids: Sequence[Any] | None = None) -> tuple[Tensor, list[dict[str, Any]]]:
    """Run `solver.solve(y, A, generator)` with a `GradientRecorder` attached; returns (x_hat, rows).
    The recorder is removed afterwards, also when the solve fails."""
    recorder = GradientRecorder(image_ids=image_ids, schedule=getattr(solver.prior, "schedule", None))
    solver.add_observer(recorder)
    try:
        x = solver.solve(y, A, generator)
    finally:
        solver.remove_observer(recorder)
    return x, recorder.rows


# ---------------------------------------------------------------------------------- summaries
QUANTITIES: tuple[str, ...] = ("conflict_deg", "fluctuation_deg", "prior_fluctuation_deg",
                               "update_fluctuation_deg", "grad_norm", "prior_norm", "update_norm")


def summarize(rows: Iterable[dict[str, Any]], quantities: Sequence[str] = QUANTITIES) -> list[dict[str, Any]]:
    """Median and quartiles over images per (step, inner), NaNs left out; one dict per (step, inner) with
    step, inner, sigma, n_images and <q>_q25 / <q>_median / <q>_q75 for every quantity (NaN if none)."""
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((int(r["step"]), int(r["inner"])), []).append(r)
    out = []
    for (step, inner), rs in sorted(groups.items()):
        s: dict[str, Any] = {"step": step, "inner": inner, "sigma": rs[0]["sigma"], "n_images": len(rs)}
        for q in quantities:
            vals = torch.tensor([float(r[q]) for r in rs], dtype=torch.float64)
            vals = vals[~torch.isnan(vals)]
            if vals.numel():
                q25, med, q75 = torch.quantile(vals, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
            else:
                q25 = med = q75 = float("nan")
            s[f"{q}_q25"], s[f"{q}_median"], s[f"{q}_q75"] = q25, med, q75
        out.append(s)
    return out


def phase_medians(rows: Iterable[dict[str, Any]], quantity: str, phases: int = 3) -> list[float]:
    """Median of `quantity` over all rows of each third (early / middle / late) of the outer steps; used by the
    README's numbers. NaNs left out (NaN if a phase has none)."""
    rows = list(rows)
    steps = sorted({int(r["step"]) for r in rows})
    if not steps:
        return [float("nan")] * phases
    out = []
    for p in range(phases):
        lo, hi = steps[0] + (steps[-1] + 1 - steps[0]) * p / phases, steps[0] + (steps[-1] + 1 - steps[0]) * (p + 1) / phases
        vals = [float(r[quantity]) for r in rows if lo <= int(r["step"]) < hi and not math.isnan(float(r[quantity]))]
        out.append(float(torch.quantile(torch.tensor(vals, dtype=torch.float64), 0.5)) if vals else float("nan"))
    return out


# ---------------------------------------------------------------------------------- files
def write_csv(rows: Iterable[dict[str, Any]], path: str | Path, header: Sequence[str] = ()) -> Path:
    """Per-image rows as CSV; `header` lines (and CSV_NOTE) first, as '# ' comments."""
    from common.fileio import atomic_write_text
    import io
    buf = io.StringIO()
    for line in (*header, *CSV_NOTE):
        buf.write(f"# {line}\n")
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: _fmt(r.get(c)) for c in COLUMNS})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buf.getvalue())
    return path


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows written by `write_csv` (numbers as floats, step / inner / event as ints)."""
    with open(path) as f:
        lines = [line for line in f if not line.startswith("#")]
    rows = []
    for r in csv.DictReader(lines):
        row: dict[str, Any] = {}
        for c, v in r.items():
            if c == "image":
                row[c] = v
            elif c in ("event", "step", "inner"):
                row[c] = int(v)
            else:
                row[c] = float(v) if v not in ("", None) else float("nan")
        rows.append(row)
    return rows


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.5g}"
    return v


def plot(rows: Sequence[dict[str, Any]], path_stem: str | Path, title: str = "") -> list[Path]:
    """The paper's Fig. 2 style: median (line) and quartiles (band) over images against the outer step.
    Left: conflict (blue; the first and the last warm-up step when there are several), likelihood-gradient
    fluctuation (orange), prior-direction fluctuation (green), applied-update fluctuation (red, if reported).
    Right: the norms (log scale). Writes <stem>.png and <stem>.pdf; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    inners = sorted({s["inner"] for s in summary})
    last = inners[-1]
    fig, (ax, axn) = plt.subplots(1, 2, figsize=(11, 3.8))

    def series(q: str, inner: int | None):
        pts = [s for s in summary if inner is None or s["inner"] == inner]
        pts = [s for s in pts if not math.isnan(s[f"{q}_median"])]
        if inner is None:  # every event in order: x = step + inner / (number of inner steps)
            xs = [s["step"] + s["inner"] / (last + 1) for s in pts]
        else:
            xs = [s["step"] for s in pts]
        return xs, pts

    def draw(axis, q: str, inner: int | None, color: str, label: str, style: str = "-") -> None:
        xs, pts = series(q, inner)
        if not pts:
            return
        axis.plot(xs, [s[f"{q}_median"] for s in pts], style, color=color, lw=1.2, label=label)
        axis.fill_between(xs, [s[f"{q}_q25"] for s in pts], [s[f"{q}_q75"] for s in pts], color=color, alpha=0.2,
                          lw=0)

    if last > 0:
        draw(ax, "conflict_deg", 0, "tab:blue", "conflict, first warm-up step", "--")
        draw(ax, "conflict_deg", last, "tab:blue", f"conflict, warm-up step {last} (denoised here)")
        draw(ax, "fluctuation_deg", 0, "tab:orange", "fluctuation vs previous outer step", "--")
        draw(ax, "fluctuation_deg", last, "tab:orange", f"fluctuation inside warm-up (step {last} vs {last - 1})")
        draw(ax, "update_fluctuation_deg", last, "tab:red", f"applied update (ADM) fluctuation, step {last}")
    else:
        draw(ax, "conflict_deg", 0, "tab:blue", "conflict: angle(-grad, prior direction)")
        draw(ax, "fluctuation_deg", 0, "tab:orange", "fluctuation: angle(grad_t, grad_t-1)")
        draw(ax, "update_fluctuation_deg", 0, "tab:red", "applied update fluctuation")
    draw(ax, "prior_fluctuation_deg", last, "tab:green", "prior direction: angle(d_t, d_t-1)")
    ax.axhline(90, color="0.6", lw=0.8, ls=":")
    ax.set_ylim(0, 180)
    ax.set_xlabel("outer step (noise level decreasing)")
    ax.set_ylabel("angle (degrees)")
    ax.legend(fontsize=7, loc="best")
    draw(axn, "grad_norm", last, "tab:orange", "||likelihood gradient||")
    draw(axn, "prior_norm", last, "tab:green", "||prior direction||")
    draw(axn, "update_norm", last, "tab:red", "||applied update||")
    axn.set_yscale("log")
    axn.set_xlabel("outer step (noise level decreasing)")
    axn.set_ylabel("norm")
    axn.legend(fontsize=7, loc="best")
    n_img = len({r["image"] for r in rows})
    fig.suptitle(f"{title}  (median and quartiles over {n_img} images)" if title else
                 f"median and quartiles over {n_img} images", fontsize=10)
    fig.tight_layout()
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, dpi=130)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------------- run summaries
SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("conflict_deg", "conflict at the denoised point"),
    ("conflict_deg_first_inner", "conflict at warm-up step 0"),
    ("fluctuation_deg", "fluctuation (last inner step)"),
    ("fluctuation_deg_outer", "fluctuation across outer steps"),
    ("update_fluctuation_deg", "applied-update fluctuation"),
)


def summary_table(runs: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table and CSV rows of run summaries (the JSON files `bench diagnose` writes: {settings, summary}),
    one row per run: label, task, NFE, PSNR and early / middle / late medians of each SUMMARY_COLUMNS quantity."""
    head = ["run", "task", "NFE/img (fwd+bwd)", "PSNR dB (exact posterior mean)"] + [f"{title} (early / mid / late)"
                                                             for _, title in SUMMARY_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    csv_rows = []
    for run in sorted(runs, key=lambda r: (r["settings"]["task"], r["settings"]["label"])):
        st, sm = run["settings"], run["summary"]
        b = st.get("budget_per_image", {})
        nfe = f"{b.get('nfe_forward', '?')}+{b.get('nfe_backward', '?')}"
        ref = sm.get("psnr_posterior_mean")
        cells = [st["label"], st["task"], nfe, f"{sm['psnr_mean']:.2f}" + (f" ({ref:.2f})" if ref is not None else "")]
        row = {"run": st["label"], "task": st["task"], "nfe_forward": b.get("nfe_forward"),
               "nfe_backward": b.get("nfe_backward"), "psnr_mean": sm["psnr_mean"],
               "psnr_posterior_mean": ref}
        for key, _ in SUMMARY_COLUMNS:
            vals = sm.get(key, [float("nan")] * 3)
            cells.append(" / ".join("–" if math.isnan(v) else f"{v:.1f}" for v in vals))
            for phase, v in zip(("early", "mid", "late"), vals):
                row[f"{key}_{phase}"] = v
        lines.append("| " + " | ".join(cells) + " |")
        csv_rows.append(row)
    return "\n".join(lines) + "\n", csv_rows


def plot_comparison(runs: dict[str, dict[str, Sequence[dict[str, Any]]]], quantity: str, path_stem: str | Path,
                    ylabel: str, inner: str = "last") -> list[Path]:
    """One panel per task, one line per run (median over images, quartile band) of `quantity` at one warm-up
    step of each outer step (`inner` "last": where the denoiser is applied; "first": warm-up step 0, whose
    fluctuation compares consecutive outer steps), against the noise level sigma (log axis, decreasing to the
    right) so that runs with different step counts line up. runs: task -> label -> rows.
    Writes <stem>.png and <stem>.pdf."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(runs)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = sorted({label for per_task in runs.values() for label in per_task})
    for ax, task in zip(axes[0], tasks):
        for label, rows in sorted(runs[task].items()):
            pick = max(int(r["inner"]) for r in rows) if inner == "last" else 0
            pts = [s for s in summarize([r for r in rows if int(r["inner"]) == pick], (quantity,))
                   if not math.isnan(s[f"{quantity}_median"]) and s["sigma"] > 0]
            if not pts:
                continue
            color = colors[labels.index(label) % len(colors)]
            xs = [s["sigma"] for s in pts]
            ax.plot(xs, [s[f"{quantity}_median"] for s in pts], color=color, lw=1.1, label=label)
            ax.fill_between(xs, [s[f"{quantity}_q25"] for s in pts], [s[f"{quantity}_q75"] for s in pts],
                            color=color, alpha=0.15, lw=0)
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("noise level sigma (VE)")
        if quantity.endswith("_deg"):
            ax.axhline(90, color="0.6", lw=0.8, ls=":") if quantity.startswith("conflict") else None
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    stem = Path(path_stem)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, dpi=130)
    plt.close(fig)
    return paths
