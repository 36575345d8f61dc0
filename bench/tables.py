"""`python -m bench table`: paper-style tables as a pure function of the stored records.

Outputs in results/<protocol>/ (byte-identical for identical records: sorted rows, fixed formats):

* `table1.csv`      tidy: dataset, task, method, metric, mean, std, n, ci95_low, ci95_high, n_ok, n_total
                    (mean/std/CI over the images whose status is ok; 95 % CI = t-interval over images)
* `table1.md`       the SPGD Table 1 layout: a block per dataset, rows = methods, a column group per
                    task with PSNR / SSIM / LPIPS; best **bold**, second <u>underlined</u> (oracle rows
                    are references and are not ranked); a cell with failures shows "value (n_ok/n)";
                    footer: the metric card, noise, prior, seed, code version(s)
* `table1.tex`      the same table for LaTeX (booktabs)
* `table1_cost.md` / `table1_cost.csv`  NFE forward / backward, seconds per image, peak memory
* `table1_vs_reference.md`  ours next to a published table (protocol `reference:`), when given

The layout (order and labels of datasets, tasks and methods) comes from the protocol when given,
otherwise from sorted names; the numbers come only from the records.

One row is one configuration made by one version of the code: records are grouped by (dataset, task,
entry, config hash, code fingerprint) and never averaged across those. By default a row shows the
variant the current protocol and code ask for (`selection`); every other variant in the store is listed
under the table (count, what differs in words: "lr 2.5 -> 1.0", "code: solvers/spgd.py changed"), and
`all_configs` adds them as labelled rows (never ranked). A row whose solver uses a model besides the
protocol's prior (its config's `external_models`, e.g. PnP-ADMM's DnCNN) carries a footnote naming it.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from scipy import stats as sps

from common.fileio import atomic_write_text

METRICS = ("psnr", "ssim", "lpips")
HIGHER_BETTER = {"psnr": True, "ssim": True, "lpips": False}
DIGITS = {"psnr": 2, "ssim": 3, "lpips": 3}
ARROW = {"psnr": "PSNR↑", "ssim": "SSIM↑", "lpips": "LPIPS↓"}
ORACLE_LABELS = {"oracle_mean": "oracle: exact posterior mean", "oracle_sample": "oracle: exact posterior sample"}


@dataclass
class Layout:
    datasets: list[tuple[str, str]] = field(default_factory=list)  # (name, label)
    tasks: list[tuple[str, str]] = field(default_factory=list)
    methods: list[tuple[str, str]] = field(default_factory=list)
    unranked: set[str] = field(default_factory=set)  # rows shown but never ranked (other configurations)

    @classmethod
    def from_protocol(cls, protocol: Any) -> "Layout":
        return cls([(d.name, d.label) for d in protocol.datasets], [(t.name, t.label) for t in protocol.tasks],
                   [(s.name, ORACLE_LABELS.get(s.name, s.label) if s.label == s.name else s.label)
                    for s in protocol.solvers])

    def complete(self, records: list[dict]) -> "Layout":
        """Add (sorted, labelled by name) whatever the records hold beyond the layout; drop what they lack."""
        out = Layout()
        for attr, key in (("datasets", "dataset"), ("tasks", "task"), ("methods", "solver")):
            present = sorted({r[key] for r in records})
            known = [(n, lab) for n, lab in getattr(self, attr) if n in present]
            names = {n for n, _ in known}
            extra = [(n, ORACLE_LABELS.get(n, n)) for n in present if n not in names]
            setattr(out, attr, known + extra)
        out.unranked = set(self.unranked)
        return out


@dataclass
class Cell:
    n_total: int
    n_ok: int
    mean: dict[str, float]
    std: dict[str, float]
    ci: dict[str, tuple[float, float]]
    status: dict[str, int]
    images: frozenset = frozenset()
    config_hash: str = ""
    fingerprint: str = ""


def _mean_std_ci(values: list[float]) -> tuple[float, float, tuple[float, float]]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan, (math.nan, math.nan)
    mean = math.fsum(values) / n
    if n == 1:
        return mean, math.nan, (math.nan, math.nan)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(sps.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return mean, std, (mean - half, mean + half)


def aggregate(records: Iterable[dict]) -> dict[tuple[str, str, str], Cell]:
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["task"], r["solver"]), []).append(r)
    out = {}
    for key in sorted(groups):
        rs = sorted(groups[key], key=lambda r: r["image_id"])
        ok = [r for r in rs if r["status"] == "ok"]
        mean, std, ci = {}, {}, {}
        for m in METRICS + ("nfe_forward", "nfe_backward", "seconds", "peak_mem_mb"):
            vals = [float(r[m]) for r in ok if r.get(m) is not None]
            mean[m], std[m], ci[m] = _mean_std_ci(vals)
        status: dict[str, int] = {}
        for r in rs:
            status[r["status"]] = status.get(r["status"], 0) + 1
        hashes = {r["config_hash"] for r in rs}
        fps = {r.get("fingerprint") or "" for r in rs}
        if len(hashes) > 1 or len(fps) > 1:  # select_rows gives every variant its own row
            raise ValueError(f"{key}: records of {len(hashes)} configurations / {len(fps)} code versions in one "
                             f"row; a row is one configuration made by one version of the code")
        out[key] = Cell(len(rs), len(ok), mean, std, ci, status, frozenset(r["image_id"] for r in rs),
                        hashes.pop(), fps.pop())
    return out


def _f(x: float, digits: int = 6) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


# --------------------------------------------------------------------------------------- CSV
def tidy_csv(cells: dict, layout: Layout) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "task", "method", "metric", "mean", "std", "n", "ci95_low", "ci95_high", "n_ok", "n_total",
                "config_hash", "fingerprint"])
    for ds, _ in layout.datasets:
        for task, _ in layout.tasks:
            for method, _ in layout.methods:
                c = cells.get((ds, task, method))
                if c is None:
                    continue
                for m in METRICS:
                    w.writerow([ds, task, method, m, _f(c.mean[m]), _f(c.std[m]), c.n_ok, _f(c.ci[m][0]),
                                _f(c.ci[m][1]), c.n_ok, c.n_total, c.config_hash, c.fingerprint])
    return buf.getvalue()


# --------------------------------------------------------------------------------------- ranking
def _ranks(cells: dict, ds: str, task: str, methods: list[str], metric: str,
           unranked: set[str] = frozenset()) -> dict[str, int]:
    """1 = best, 2 = second, over non-oracle methods with results; ties (at display precision) share a rank."""
    vals = {}
    for m in methods:
        c = cells.get((ds, task, m))
        if c is None or m in ORACLE_LABELS or m in unranked or c.n_ok == 0 or math.isnan(c.mean[metric]):
            continue
        vals[m] = round(c.mean[metric], DIGITS[metric])
    distinct = sorted(set(vals.values()), reverse=HIGHER_BETTER[metric])
    return {m: distinct.index(v) + 1 for m, v in vals.items() if distinct.index(v) < 2}


def _cell_text(c: Cell | None, metric: str, rank: int | None, bold: tuple[str, str], under: tuple[str, str],
               show_counts: bool) -> str:
    if c is None:
        return ""
    if c.n_ok == 0:
        text = "–"
    else:
        text = f"{c.mean[metric]:.{DIGITS[metric]}f}"
        if rank == 1:
            text = bold[0] + text + bold[1]
        elif rank == 2:
            text = under[0] + text + under[1]
    if show_counts and c.n_ok < c.n_total and not (c.n_ok == 0 and set(c.status) == {"unsupported"}):
        text += f" ({c.n_ok}/{c.n_total})"
    return text


# --------------------------------------------------------------------------------------- Markdown
def markdown(cells: dict, layout: Layout, title: str, footer: str) -> str:
    lines = [f"# {title}", "", "PSNR↑ / SSIM↑ / LPIPS↓, mean over images. **Bold**: best, <u>underlined</u>: second "
             "(oracle rows are exact-posterior references, not ranked). \"x (k/n)\": k of n images succeeded; "
             "\"–\": not run (unsupported task) or no success.", ""]
    methods = [m for m, _ in layout.methods]
    for ds, ds_label in layout.datasets:
        n_images = len({i for (d, _, _), c in cells.items() if d == ds for i in c.images})
        lines += [f"## {ds_label} ({n_images} images)", ""]
        head = ["Method"]
        for _, t_label in layout.tasks:
            head += [f"{t_label} {ARROW['psnr']}", ARROW["ssim"], ARROW["lpips"]]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" + "---:|" * (len(head) - 1))
        ranks = {(t, m): _ranks(cells, ds, t, methods, m, layout.unranked) for t, _ in layout.tasks for m in METRICS}
        for method, label in layout.methods:
            if not any((ds, t, method) in cells for t, _ in layout.tasks):
                continue
            row = [f"*{label}*" if method in ORACLE_LABELS else label]
            for t, _ in layout.tasks:
                c = cells.get((ds, t, method))
                for m in METRICS:
                    row.append(_cell_text(c, m, ranks[(t, m)].get(method), ("**", "**"), ("<u>", "</u>"), m == "psnr"))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += [footer, ""]
    return "\n".join(lines)


def latex(cells: dict, layout: Layout, title: str) -> str:
    methods = [m for m, _ in layout.methods]
    nt = len(layout.tasks)
    out = [f"% {title} -- generated by `python -m bench table`", r"\begin{tabular}{l" + "ccc" * nt + "}", r"\toprule"]
    out.append(" & " + " & ".join(rf"\multicolumn{{3}}{{c}}{{{_tex(t)}}}" for _, t in layout.tasks) + r" \\")
    out.append("".join(rf"\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(nt)))
    out.append("Method" + " & PSNR$\\uparrow$ & SSIM$\\uparrow$ & LPIPS$\\downarrow$" * nt + r" \\")
    for ds, ds_label in layout.datasets:
        out += [r"\midrule", rf"\multicolumn{{{1 + 3 * nt}}}{{l}}{{\textit{{{_tex(ds_label)}}}}} \\", r"\midrule"]
        ranks = {(t, m): _ranks(cells, ds, t, methods, m, layout.unranked) for t, _ in layout.tasks for m in METRICS}
        for method, label in layout.methods:
            if not any((ds, t, method) in cells for t, _ in layout.tasks):
                continue
            row = [_tex(label)]
            for t, _ in layout.tasks:
                for m in METRICS:
                    row.append(_cell_text(cells.get((ds, t, method)), m, ranks[(t, m)].get(method),
                                          (r"\textbf{", "}"), (r"\underline{", "}"), m == "psnr").replace("–", "--"))
            out.append(" & ".join(row) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(out)


def _tex(s: str) -> str:
    return s.replace("\\", r"\textbackslash{}").replace("%", r"\%").replace("_", r"\_").replace("&", r"\&").replace("#", r"\#")


# --------------------------------------------------------------------------------------- cost
def cost_tables(cells: dict, layout: Layout, title: str,
                training: dict[tuple[str, str, str], str] | None = None) -> tuple[str, str]:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "task", "method", "nfe_forward", "nfe_backward", "seconds_per_image", "peak_mem_mb", "n_ok", "n_total"])
    md = [f"# {title}: cost", "", "Per image: network forward / backward (vector-Jacobian) evaluations, wall-clock "
          "seconds (batch time / batch size), peak memory of the batch (GPU: max allocated; CPU: growth of the "
          "process RSS high-water mark, 0 once the peak is reached).", ""]
    for ds, ds_label in layout.datasets:
        md += [f"## {ds_label}", "", "| Method | " + " | ".join(t for _, t in layout.tasks) + " |",
               "|---|" + "---:|" * len(layout.tasks)]
        for method, label in layout.methods:
            row, any_cell = [label], False
            for t, _ in layout.tasks:
                c = cells.get((ds, t, method))
                if c is None or c.n_ok == 0:
                    row.append("–")
                    continue
                any_cell = True
                row.append(f"{_nfe(c.mean['nfe_forward'])} / {_nfe(c.mean['nfe_backward'])} NFE · "
                           f"{c.mean['seconds']:.3g} s · {c.mean['peak_mem_mb']:.0f} MB")
            if any_cell:
                md.append("| " + " | ".join(row) + " |")
        md.append("")
        md += _training_cost_lines(training or {}, ds, layout)
        for t, _ in layout.tasks:
            for method, _ in layout.methods:
                c = cells.get((ds, t, method))
                if c is not None:
                    w.writerow([ds, t, method, _f(c.mean["nfe_forward"], 1), _f(c.mean["nfe_backward"], 1),
                                _f(c.mean["seconds"], 4), _f(c.mean["peak_mem_mb"], 1), c.n_ok, c.n_total])
    return "\n".join(md), buf.getvalue()


def _training_cost_lines(training: dict[tuple[str, str, str], str], ds: str, layout: Layout) -> list[str]:
    """Trained restorers (HYPIR): their training cost per task, from the adapter metadata, under the NFE table."""
    rows = [(label, t_label, training[(ds, t, m)]) for m, label in layout.methods for t, t_label in layout.tasks
            if (ds, t, m) in training]
    if not rows:
        return []
    out = ["Trained per task (not zero-shot): the cost above is inference only; training cost from the adapter "
           "metadata:", ""]
    out += [f"- {label}, {task}: {text}" for label, task, text in rows]
    return out + [""]


def training_costs(records: list[dict], configs: dict[str, dict]) -> dict[tuple[str, str, str], str]:
    """(dataset, task, row) -> the `training` entry of its solver's external models (trained restorers only)."""
    out = {}
    for r in records:
        ext = (configs.get(r["config_hash"], {}).get("solver") or {}).get("external_models") or {}
        if ext.get("training"):
            out[(r["dataset"], r["task"], r["solver"])] = str(ext["training"])
    return out


def _nfe(x: float) -> str:
    return "–" if math.isnan(x) else (f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.1f}")


# --------------------------------------------------------------------------------------- reference
def read_reference(path: Path) -> dict[tuple[str, str, str], dict[str, float]]:
    ref = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            ref[(row["dataset"], row["task"], row["method"])] = {
                m: (float(row[m]) if row[m] not in ("", "-", "–") else math.nan) for m in METRICS}
    return ref


def reference_markdown(cells: dict, layout: Layout, ref: dict, title: str, source: str) -> str:
    lines = [f"# {title}: ours vs published", "", f"Each cell: ours / published ({source}). PSNR↑ / SSIM↑ / LPIPS↓.", ""]
    for ds, ds_label in layout.datasets:
        lines += [f"## {ds_label}", "", "| Method | " + " | ".join(
            f"{t} {ARROW[m]}" if m == "psnr" else ARROW[m] for _, t in layout.tasks for m in METRICS) + " |",
            "|---|" + "---:|" * (3 * len(layout.tasks))]
        for method, label in layout.methods:
            if not any((ds, t, method) in cells or (ds, t, method) in ref for t, _ in layout.tasks):
                continue
            row = [label]
            for t, _ in layout.tasks:
                c, r = cells.get((ds, t, method)), ref.get((ds, t, method), {})
                for m in METRICS:
                    ours = f"{c.mean[m]:.{DIGITS[m]}f}" if c and c.n_ok else "–"
                    paper = f"{r[m]:.{DIGITS[m]}f}" if r and not math.isnan(r.get(m, math.nan)) else "–"
                    row.append(f"{ours} / {paper}")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- footer
def external_models(records: list[dict], configs: dict[str, dict]) -> dict[str, dict[str, str]]:
    """Row id -> the models it uses besides the protocol's prior (from its configuration)."""
    out: dict[str, dict[str, str]] = {}
    for r in records:
        ext = (configs.get(r["config_hash"], {}).get("solver") or {}).get("external_models") or {}
        if ext:
            out[r["solver"]] = dict(ext)
    return out


def footer(records: list[dict], configs: dict[str, dict], notes: list[str] | None = None,
           marks: dict[str, tuple[str, dict[str, str]]] | None = None, labels: dict[str, str] | None = None) -> str:
    used = sorted({r["config_hash"] for r in records})
    cfgs = [configs[h] for h in used if h in configs]
    lines = ["### Metric card and protocol", ""]
    cards = sorted({_kv(c.get("metrics", {})) for c in cfgs})
    for card in cards or ["(no configuration stored with these records)"]:
        lines.append(f"- metrics: {card}")
    lines.append("- PSNR of an image equal to its reference is capped at 100 dB (MSE floored at 1e-10), so no mean "
                 "is +inf")
    noise = sorted({f"{c['task']['name']}: sigma_y = {c['task']['sigma_y']:g}" for c in cfgs if "task" in c})
    if noise:
        lines.append("- measurement noise (std in [-1,1] pixel units; 0.05 there = 0.025 on [0,1]): " + "; ".join(noise))
    priors = sorted({f"{c['dataset']['name']}: {c['dataset']['prior']} ({c['dataset']['image_size']}px, "
                     f"manifest {c['dataset']['manifest']})" for c in cfgs if "dataset" in c})
    if priors:
        lines.append("- data and prior: " + "; ".join(priors))
    speeds = sorted({_kv(c["speed"]) for c in cfgs if "speed" in c})
    if speeds:
        lines.append("- speed switches: " + " | ".join(speeds) + " (fp32 and every switch off reproduce the "
                     "reference numbers; see README 'GPU machines')")
    rng = sorted({c["rng_device"] for c in cfgs if "rng_device" in c})
    if rng:
        words = {"run": "drawn on the run's device", "cpu": "drawn on the CPU (identical on every device)"}
        lines.append("- random streams: " + "; ".join(words.get(v, v) for v in rng))
    seeds = sorted({str(r["seed"]) for r in records})
    lines.append(f"- seed: {', '.join(seeds)}; per-image operator, noise and solver streams (bench/seeding.py)")
    lines.append(tuning_line(records, configs, labels))
    versions = sorted({r.get("code_version", "?") for r in records})
    lines.append(f"- code version: {', '.join(versions)}")
    fps = sorted({r.get("fingerprint") or "?" for r in records})
    lines.append(f"- code fingerprints (bench/fingerprint.py; one per row, listed in table1.csv): {len(fps)} distinct")
    for row, (mark, models) in sorted((marks or {}).items(), key=lambda kv: kv[1][0]):
        what = "; ".join(f"{k}: {v}" for k, v in sorted(models.items()))
        lines.append(f"- {mark} {(labels or {}).get(row, row)} uses a model besides the protocol's prior: {what}")
    trained = sorted({r["solver"] for r in records if ((configs.get(r["config_hash"], {}).get("solver") or {})
                                                       .get("external_models") or {}).get("training")})
    for row in trained:
        lines.append(f"- {(labels or {}).get(row, row)}: a trained restorer, not zero-shot (HYPIR: one adapter trained "
                     "per task on pairs of that task, 1 NFE at test time); discriminator backbone and training cost "
                     "per task in table1_cost.md")
    failed = sorted({(r["solver"], r["task"], r["status"], r["message"]) for r in records
                     if r["status"] in ("diverged", "error")})
    if failed:
        lines.append("- failures:")
        for solver, task, status, msg in failed[:20]:
            lines.append(f"  - {solver} / {task}: {status}: {msg}")
    if notes:
        lines += ["", "### Other configurations in the store", ""]
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def tuning_line(records: list[dict], configs: dict[str, dict], labels: dict[str, str] | None = None) -> str:
    """Which rows used tuned hyper-parameters (solvers/configs/tuned/<protocol>.yaml, `tuning: tuned`)."""
    tuned: dict[str, set[str]] = {}
    for r in records:
        keys = ((configs.get(r["config_hash"]) or {}).get("solver") or {}).get("tuned") or {}
        if keys:
            tuned.setdefault(r["solver"], set()).update(keys)
    if not tuned:
        return ("- hyper-parameters: published values (solvers/configs/<solver>.yaml, each with its source) in "
                "every row")
    rows = "; ".join(f"{(labels or {}).get(row, row)} ({', '.join(sorted(keys))})" for row, keys in sorted(tuned.items()))
    return (f"- hyper-parameters: tuned on the validation split (solvers/configs/tuned/, `bench sweep`) in: {rows}; "
            f"published values (solvers/configs/<solver>.yaml) elsewhere")


def _kv(d: dict) -> str:
    return ", ".join(f"{k}={d[k]}" for k in sorted(d))


# --------------------------------------------------------------------------------------- entry
#: every protocol's tables use the SPGD Table 1 layout, hence the file names results/<protocol>/table1.*
TABLE_STEM = "table1"


MARKS = "¹²³⁴⁵⁶⁷⁸⁹"


def write(records: list[dict], configs: dict[str, dict], out_dir: Path, name: str, layout: Layout | None = None,
          reference: Path | None = None, description: str = "", selection: dict | None = None,
          selection_problem: str = "", all_configs: bool = False,
          fingerprints: dict[str, dict] | None = None) -> list[Path]:
    """Write every table of a results folder; returns the files written.

    `records`: every record of the store (all versions); `selection`: (dataset, task, entry) -> (config hash,
    fingerprint) that the current protocol and code ask for (None: unknown, see bench/variants.py)."""
    from bench.variants import select_rows
    layout = layout or Layout()
    labels = dict(layout.methods)
    rows = select_rows(records, configs, selection or None, all_configs, fingerprints, labels)
    notes = list(rows.notes)
    if selection_problem:
        notes.insert(0, f"the configuration the protocol asks for could not be computed ({selection_problem}); "
                        f"every configuration in the store is shown, labelled")
    base = Layout(layout.datasets, layout.tasks, _with_extra(layout.methods, rows), layout.unranked | rows.unranked)
    shown = rows.records
    layout = base.complete(shown)
    ext = external_models(shown, configs)
    marks = {row: (MARKS[i % len(MARKS)], models) for i, (row, models) in
             enumerate(sorted(ext.items(), key=lambda kv: [m for m, _ in layout.methods].index(kv[0])))}
    plain_labels = dict(layout.methods)
    layout.methods = [(m, lab + marks[m][0] if m in marks else lab) for m, lab in layout.methods]
    cells = aggregate(shown)
    title = f"{name}: {description}" if description else name
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = TABLE_STEM
    foot = footer(shown, configs, notes, marks, plain_labels)
    files = {f"{stem}.csv": tidy_csv(cells, layout),
             f"{stem}.md": markdown(cells, layout, title, foot),
             f"{stem}.tex": latex(cells, layout, title)}
    cost_md, cost_csv = cost_tables(cells, layout, title, training_costs(shown, configs))
    files[f"{stem}_cost.md"], files[f"{stem}_cost.csv"] = cost_md + "\n", cost_csv
    if reference is not None and reference.exists():
        files[f"{stem}_vs_reference.md"] = reference_markdown(cells, layout, read_reference(reference), title,
                                                              reference.name) + "\n"
    written = []
    for fname, text in files.items():
        written.append(atomic_write_text(out_dir / fname, text))
    from bench import figures  # quality-vs-cost figures of every configuration in the store
    titles = {(d, t): f"{dl} / {tl}: quality vs cost" for d, dl in base.datasets for t, tl in base.tasks}
    written += figures.write(records, configs, out_dir / "figures", titles)
    return written


def _with_extra(methods: list[tuple[str, str]], rows: Any) -> list[tuple[str, str]]:
    """The layout's rows, each followed by the extra (other-variant) rows of the same entry."""
    out: list[tuple[str, str]] = []
    placed = set()
    for m, lab in methods:
        out.append((m, lab))
        for row, row_label in rows.methods:
            if rows.base_method.get(row) == m:
                out.append((row, row_label))
                placed.add(row)
    out += [(row, lab) for row, lab in rows.methods if row not in placed]
    return out
