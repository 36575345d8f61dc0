"""`python -m bench diagnose`: SPGD-style gradient diagnostics of one solver on one task (bench/diagnostics.py).

    python -m bench diagnose --solver spgd --task deblur_gaussian [--prior gaussian] [--images 8]
                             [--out results/diagnostics] [--set adm=false --set warmup_steps=1] [--label NAME]
    python -m bench diagnose --preset spgd-fig2 [--images 8]    (DPS and SPGD variants on the Table 1 tasks)
    python -m bench diagnose --summarize [--out DIR]             (summary.md / .csv from the runs' *.json)

Ground truths: drawn from the prior when it can sample (the exact Gaussian prior: then the measurement model
is exactly the one the prior describes), else the first images of the protocol's first dataset. Operators
(kernel sizes, mask rate), sigma_y and the seed come from the protocol (default `demo`: the Table 1 operators
at 64 x 64, sigma_y 0.05); streams are derived per image as in `bench run`.

Writes <out>/<label>_<task>.csv (one row per image and likelihood gradient), <label>_<task>.png / .pdf (median
and quartiles over images per step, the paper's Fig. 2 style) and <label>_<task>.json (settings, NFE, PSNR of
the results, early / middle / late medians).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
import yaml

from bench.errors import BenchError

DEFAULT_OUT = "results/diagnostics"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diagnose", help="gradient conflict / fluctuation of a likelihood-guided solver "
                                        "(SPGD paper Fig. 2) per image and step: CSV + figure",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--solver", help="a solver that applies a likelihood gradient "
                                    "(dps, dpps, mcg, spgd, dcdp, reddiff, daps, pigdm)")
    p.add_argument("--task", help="a task (python -m bench tasks)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="run a set of (solver, settings) x tasks instead "
                   "(spgd-fig2: DPS, SPGD, SPGD without ADM, SPGD without warm-up on the four Table 1 tasks), "
                   "then --summarize the output folder")
    p.add_argument("--summarize", action="store_true", help="(re)write <out>/summary.md and summary.csv from the "
                                                            "run summaries (*.json) in --out")
    p.add_argument("--prior", default="gaussian", help="prior name or checkpoint (default: the exact Gaussian prior)")
    p.add_argument("--images", type=int, default=8, help="number of images (default 8)")
    p.add_argument("--size", type=int, default=None, help="image size (default: the protocol's first dataset's)")
    p.add_argument("--truths", choices=("auto", "prior", "data"), default="auto",
                   help="ground truths: samples of the prior, or the protocol's first dataset's images (default "
                        "auto: the prior's samples when it can draw them)")
    p.add_argument("--protocol", default="demo", help="where operator parameters, sigma_y and the seed come from "
                                                      "(default demo)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a hyper-parameter of the solver (YAML value); repeatable")
    p.add_argument("--label", help="file name prefix (default: the solver name)")
    p.set_defaults(func=cmd_diagnose)


def parse_sets(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE items (values parsed as YAML) -> overrides."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or "." in key:
            raise BenchError(f"--set {item!r}: expected KEY=VALUE (the solver is given by --solver), e.g. "
                             f"--set warmup_steps=1")
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            out[key.strip()] = text
    return out


def check_solver(name: str) -> None:
    """BenchError (one line) unless `name` is a registered solver that reports likelihood gradients."""
    from bench.diagnostics import emits_likelihood_steps
    from solvers.base import available, solver_class
    if name not in available():
        raise BenchError(f"unknown solver {name!r}; available: {', '.join(available())}")
    if not emits_likelihood_steps(solver_class(name)):
        usable = [n for n in available() if emits_likelihood_steps(solver_class(n))]
        raise BenchError(f"solver {name!r} applies no likelihood gradient, so there is nothing to diagnose; use one "
                         f"of: {', '.join(usable)}")


#: named sets of runs: (solver, label, overrides) on each task of `tasks`
TABLE1_TASKS = ("inpaint_random", "deblur_gaussian", "deblur_motion", "sr4")
PRESETS: dict[str, dict[str, Any]] = {
    "spgd-fig2": {"tasks": TABLE1_TASKS, "runs": (
        ("dps", "dps", {}),
        ("spgd", "spgd", {}),
        ("spgd", "spgd_no_adm", {"adm": False}),           # Table 2 "warm-up only"
        ("spgd", "spgd_no_warmup", {"warmup_steps": 1}),   # N = 1: ADM is inert (m_0 = g_0), so the baseline
    )},
}


def cmd_diagnose(args: argparse.Namespace) -> int:
    if args.images < 1:
        raise BenchError(f"--images must be >= 1, got {args.images}")
    out = Path(args.out)
    if args.preset:
        if args.solver or args.task or args.set or args.label:
            raise BenchError("--preset runs its own solvers, tasks and settings: drop --solver/--task/--set/--label")
        preset = PRESETS[args.preset]
        for task in preset["tasks"]:
            for solver, label, overrides in preset["runs"]:
                _run_one(args, solver, task, overrides, label, out)
        args.summarize = True
    elif args.solver or args.task:
        if not (args.solver and args.task):
            raise BenchError("give both --solver and --task (or --preset NAME, or --summarize)")
        check_solver(args.solver)
        _run_one(args, args.solver, args.task, parse_sets(args.set), args.label or args.solver, out)
    elif not args.summarize:
        raise BenchError("nothing to do: give --solver NAME --task TASK, --preset NAME or --summarize")
    if args.summarize:
        print(f"wrote {', '.join(str(p) for p in summarize_folder(out))}")
    return 0


def _run_one(args: argparse.Namespace, solver: str, task: str, overrides: dict[str, Any], label: str,
             out: Path) -> None:
    result = diagnose(solver, task, prior_name=args.prior, images=args.images, size=args.size,
                      protocol=args.protocol, out=out, overrides=overrides, label=label, truths=args.truths)
    print(f"wrote {', '.join(str(p) for p in result['files'])}")
    m = result["summary"]
    print(f"{label} {task}: PSNR {m['psnr_mean']:.2f} dB; conflict median early/mid/late "
          f"{_fmt3(m['conflict_deg'])}; fluctuation {_fmt3(m['fluctuation_deg'])}", flush=True)


def summarize_folder(out: Path) -> list[Path]:
    """summary.md + summary.csv from the run summaries (*.json) in `out`."""
    import csv
    import io
    from bench import diagnostics as dg
    from common.fileio import atomic_write_text
    runs = []
    for path in sorted(out.glob("*.json")):
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise BenchError(f"{path}: not a diagnose summary ({err}); remove it or rerun its diagnose command") from None
        if isinstance(run, dict) and "settings" in run and "summary" in run:
            runs.append(run)
    if not runs:
        raise BenchError(f"{out}: no run summaries (*.json written by `python -m bench diagnose`) to summarize")
    table, rows = dg.summary_table(runs)
    md = out / "summary.md"
    atomic_write_text(md, "Medians over images and over the early / middle / late third of the outer steps, "
                          "in degrees (bench/diagnostics.py: conflict = angle(-likelihood gradient, denoiser "
                          "update); fluctuation = angle between consecutive likelihood gradients).\n\n" + table)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path_csv = out / "summary.csv"
    atomic_write_text(path_csv, buf.getvalue())
    written = [md, path_csv]
    by_task: dict[str, dict[str, list]] = {}
    for run in runs:
        st = run["settings"]
        csv_path = out / f"{st['label']}_{st['task']}.csv"
        if csv_path.is_file():
            by_task.setdefault(st["task"], {})[st["label"]] = dg.read_csv(csv_path)
    if any(len(per_task) > 1 for per_task in by_task.values()):
        written += dg.plot_comparison(by_task, "conflict_deg", out / "compare_conflict",
                                      "conflict at the denoised point (deg)")
        written += dg.plot_comparison(by_task, "fluctuation_deg", out / "compare_fluctuation",
                                      "fluctuation between outer steps (deg)", inner="first")
    return written


def _fmt3(v: list[float]) -> str:
    return " / ".join("nan" if math.isnan(x) else f"{x:.1f}" for x in v)


def _psnr(x_hat: torch.Tensor, x: torch.Tensor) -> list[float]:
    """Per-image PSNR in dB of images in [-1, 1], both clipped to [-1, 1] (as bench/metrics.py on [0, 1])."""
    mse = (x_hat.clamp(-1, 1) - x.clamp(-1, 1)).flatten(1).pow(2).mean(1)
    return (10 * torch.log10(4.0 / mse.clamp_min(1e-20))).tolist()


def _task_spec(protocol: Any, task: str) -> tuple[dict[str, Any], bool, float]:
    """(operator params, shared_params, sigma_y) of `task` in the protocol (operator defaults if absent)."""
    import operators
    if task not in operators.names():
        raise BenchError(f"unknown task {task!r}; available: {', '.join(operators.names())}")
    for t in protocol.tasks:
        if t.name == task:
            return dict(t.params), bool(t.shared_params), float(t.sigma_y)
    return {}, False, float(protocol.sigma_y)


def diagnose(solver_name: str, task: str, *, prior_name: str = "gaussian", images: int = 8, size: int | None = None,
             protocol: str = "demo", out: Path = Path(DEFAULT_OUT), overrides: dict[str, Any] | None = None,
             label: str | None = None, truths: str = "auto") -> dict[str, Any]:
    """Run the diagnostics (module docstring); returns {"files": [...], "summary": {...}, "rows": [...]}."""
    import operators
    import solvers
    from bench import data, seeding
    from bench import diagnostics as dg
    from bench import protocol as proto
    from bench.prior_loading import load_prior
    from solvers.base import UnsupportedTask

    check_solver(solver_name)
    p = proto.load(protocol)
    ds = p.datasets[0]
    size = int(size or ds.image_size)
    params, shared, sigma_y = _task_spec(p, task)
    prior = load_prior(prior_name, size, "cpu")
    keys = [f"diag{i:03d}" for i in range(images)]
    if truths == "prior" and not hasattr(prior, "sample"):
        raise BenchError(f"--truths prior: prior {prior_name!r} cannot draw samples; use --truths data")
    if truths != "data" and hasattr(prior, "sample"):
        x = prior.sample(images, [seeding.generator(p.seed, "diagnose-truth", k) for k in keys])
        truth = f"{images} samples of the prior"
    else:
        refs = data.resolve(ds, limit=images)
        if len(refs) < images:
            raise BenchError(f"--images {images}: dataset {ds.name} of protocol {p.name} has {len(refs)} images")
        refs = refs[:images]
        keys = [r.key for r in refs]
        x = data.load_batch(refs, size)
        truth = f"the first {images} images of {ds.name}"
    A = operators.get(task, image_shape=tuple(x.shape[1:]), sigma_y=sigma_y, shared_params=shared,
                      seeds=[seeding.operator_seed(p.seed, task, k, shared) for k in keys], **params)
    with torch.no_grad():
        y = A.measure(x, [seeding.noise_generator(p.seed, task, k) for k in keys])
    solver = solvers.get(solver_name, prior, task=task, dataset=ds.name, **(overrides or {}))
    if not solver.supports(A):
        raise BenchError(f"solver {solver_name!r} does not support task {task!r}")
    gens = [seeding.solver_generator(p.seed, task, k, solver_name) for k in keys]
    try:
        x_hat, rows = dg.record(solver, y, A, gens, image_ids=keys)
    except UnsupportedTask as err:
        raise BenchError(str(err)) from None
    if not rows:
        raise BenchError(f"solver {solver_name!r} reported no likelihood gradients on {task!r} (no observe calls "
                         f"reached); nothing to plot")
    psnr = _psnr(x_hat, x)
    psnr_reference = None
    if hasattr(prior, "posterior_mean"):  # the exact posterior mean: the best any solver can do in MSE
        with torch.no_grad():
            psnr_reference = _psnr(prior.posterior_mean(y, A), x)
    label = label or solver_name
    stem = Path(out) / f"{label}_{task}"
    settings = {"solver": solver_name, "label": label, "task": task, "prior": prior_name, "image_size": size,
                "images": images, "truths": truth, "protocol": p.name, "seed": p.seed, "sigma_y": sigma_y,
                "operator_params": params, "overrides": overrides or {},
                "params": {k: v for k, v in solver.params.items()}, "budget_per_image": solver.budget()}
    header = [f"{k}: {json.dumps(v, default=str)}" for k, v in settings.items()]
    files = [dg.write_csv(rows, stem.with_suffix(".csv"), header)]
    title = f"{label} on {task} ({prior_name} prior, {size}x{size}, sigma_y {sigma_y})"
    files += dg.plot(rows, stem, title)
    last_inner = max(int(r["inner"]) for r in rows)
    at_denoiser = [r for r in rows if int(r["inner"]) == last_inner]
    first_inner = [r for r in rows if int(r["inner"]) == 0]
    summary = {
        "psnr": psnr, "psnr_mean": float(sum(psnr) / len(psnr)),
        "psnr_posterior_mean": None if psnr_reference is None else float(sum(psnr_reference) / len(psnr_reference)),
        "events_per_image": len(rows) // images, "warmup_steps_seen": last_inner + 1,
        "conflict_deg": dg.phase_medians(at_denoiser, "conflict_deg"),
        "conflict_deg_first_inner": dg.phase_medians(first_inner, "conflict_deg"),
        "fluctuation_deg": dg.phase_medians(at_denoiser, "fluctuation_deg"),
        "fluctuation_deg_outer": dg.phase_medians(first_inner, "fluctuation_deg") if last_inner else
        dg.phase_medians(at_denoiser, "fluctuation_deg"),
        "update_fluctuation_deg": dg.phase_medians(at_denoiser, "update_fluctuation_deg"),
        "prior_fluctuation_deg": dg.phase_medians(at_denoiser, "prior_fluctuation_deg"),
    }
    from common.fileio import atomic_write_text
    json_path = stem.with_suffix(".json")
    atomic_write_text(json_path, json.dumps({"settings": settings, "summary": summary}, indent=1, default=str) + "\n")
    files.append(json_path)
    return {"files": files, "summary": summary, "rows": rows}
