"""One short run on a lent GPU (issues 7 and 11, "on a lent GPU"): `python -m benchmarks.gpu_check --out DIR`.

Sections, most important first. Each is appended to DIR/gpu_check.jsonl as soon as it is measured and
DIR/gpu_check.md is rewritten after every section, so a run cut short keeps what it measured:

1. machine: GPU, torch, CUDA.
2. audit: `bench.device_audit.audit_solve` on the real device (not `meta`): every built-in solver x Table 1
   task with the small random-weight ADM UNet (32x32, batch 2, smoke settings): host reads of device
   values and host-device copies per step, against the budget the CPU tests enforce on meta
   (0 copies after the first step, at most ceil(steps / 10) + 1 reads per solve).
3. network: the ffhq256-size ADM UNet with random weights at 256x256: seconds of one forward and one
   forward + backward and images/s, at batch 1, 8, 16; fp32 with TF32 off (the reference numbers), fp32
   with TF32 on, bf16 autocast.
4. spgd: SPGD with its Table 1 settings (100 steps x 5 warm-up: 500 forward + 500 backward per image) on
   80 % random inpainting at 256x256, per-image generators on the device: seconds per image at batch 1 and
   8, fp32 (TF32 off) and bf16. The SPGD paper reports 33.8 s per image on an RTX 4090 at batch 1.
5. harness: `python -m bench run` and `bench table` as subprocesses on a copy of the Table 1 protocol with
   random-weight ffhq256 and imagenet256 checkpoints (file names the registry does not claim, `unet:` presets),
   2 images per dataset (the demo photographs upscaled to the protocol's size), every Table 1 solver and
   task with its smoke settings, LPIPS AlexNet (the VGG backbone is too large to carry to a lent machine);
   then the same `bench run` again, which must compute nothing (resume).
6. dpps: DPPS seconds per step at 256x256, batch 8 (20 steps).
7. compile: SPGD at batch 1 with `torch.compile` (fp32, TF32 off): first solve (compiles) and second solve.

`--quick` runs every section at CPU size (64x64 reduced-width UNet, few steps) to test this script without a
GPU. Numbers are measured here, never typed in.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

import solvers
from bench import seeding
from bench.runner import apply_speed_flags
from benchmarks.clocks import peak_memory, timed
from benchmarks.workload import ROOT, SIGMA_Y, TASK_PARAMS, NetworkTimer, build_prior
from priors.adm import create_unet, small_config
from priors.registry import SPECS

Row = dict[str, Any]


class Report:
    """Rows appended to a JSONL file at once; the Markdown rewritten after each section."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.rows: list[Row] = []
        self.t0 = time.perf_counter()
        (out / "gpu_check.jsonl").write_text("")

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", flush=True)

    def add(self, section: str, **row: Any) -> None:
        row = {"section": section, "t": round(time.perf_counter() - self.t0, 1), **row}
        self.rows.append(row)
        with open(self.out / "gpu_check.jsonl", "a") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
        self.log(f"{section}: {json.dumps({k: v for k, v in row.items() if k not in ('section', 't')}, default=str)}")

    def section(self, name: str, fn: Callable[[], None]) -> None:
        start = time.perf_counter()
        try:
            fn()
            self.add(name, status="done", seconds=round(time.perf_counter() - start, 1))
        except Exception as err:  # noqa: BLE001 - a failing section is reported and the next one runs
            self.add(name, status=f"failed: {type(err).__name__}: {' '.join(str(err).split())[:400]}",
                     traceback=traceback.format_exc().replace(f"{ROOT}/", "")[-3000:],  # repo-relative paths
                     seconds=round(time.perf_counter() - start, 1))
        (self.out / "gpu_check.md").write_text(markdown(self.rows))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- sections
def machine(rep: Report, device: torch.device) -> None:
    info: Row = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
                 "cpus": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, memory_gib=round(props.total_memory / 2**30, 1), sms=props.multi_processor_count,
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        info["commit"] = "unknown"
    rep.add("machine", **info)


def audit(rep: Report, device: torch.device) -> None:
    from bench.device_audit import audit_prior, audit_solve, read_budget, table1_pairs

    prior = audit_prior(32, device)
    for name, task in table1_pairs():
        start = time.perf_counter()
        steps = "check" if name == "pnp_admm" else "network"
        res = audit_solve(name, task, 32, 2, device, prior=prior if name != "pnp_admm" else None, steps=steps)
        budget = read_budget(res["steps"])
        rep.add("audit", solver=name, task=task, steps=res["steps"], host_reads=res["host_reads"],
                budget=budget, copies=res["copies"], copies_after_first_step=res["copies_after_first_step"],
                cpu_reads=res["cpu_reads"], ok=res["host_reads"] <= budget and res["copies_after_first_step"] == 0,
                seconds=round(time.perf_counter() - start, 2), events=res["events"][:3])


def network(rep: Report, device: torch.device, full: bool, batches: list[int]) -> None:
    for label, tf32, options in (("fp32", False, {}), ("fp32+tf32", True, {}), ("bf16", False, {"autocast": "bf16"})):
        apply_speed_flags({"tf32": tf32}, device)
        prior = build_prior(64, 32, device, full, **options)
        for batch in batches:
            timer = NetworkTimer(prior, batch, device)
            timer.sample(1)  # first-call costs out of the figures
            timer.fwd.clear(), timer.fb.clear()
            with peak_memory(device) as mem:
                timer.sample(3)
            f, fb = timer.t_fwd.wall, timer.t_fb.wall
            rep.add("network", variant=label, batch=batch, t_fwd_s=f, t_fwd_bwd_s=fb, fwd_images_per_s=batch / f,
                    fwd_bwd_images_per_s=batch / fb, peak_mib=mem["peak_bytes"] / 2**20)
        del prior
        if device.type == "cuda":
            torch.cuda.empty_cache()
    apply_speed_flags({"tf32": False}, device)


def _problem(batch: int, size: int, device: torch.device, task: str = "inpaint_random"):
    import operators

    keys = [f"gpu/{i:05d}" for i in range(batch)]
    A = operators.get(task, image_shape=(3, size, size), seeds=list(range(batch)), sigma_y=SIGMA_Y,
                      **TASK_PARAMS.get(task, {}))
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=g, device=device) * 2 - 1
    y = A.measure(x, [seeding.noise_generator(0, task, k, device=device) for k in keys])
    return A, y, keys


def solve_timed(name: str, prior: Any, batch: int, size: int, device: torch.device, task: str = "inpaint_random",
                **overrides: Any) -> Row:
    A, y, keys = _problem(batch, size, device, task)
    solver = solvers.get(name, prior, task=task, **overrides)
    gens = [seeding.solver_generator(0, task, k, name, device=device) for k in keys]
    with peak_memory(device) as mem:
        timing, x_hat = timed(lambda: solver.solve(y, A, gens), device)
    return {"seconds": timing.wall, "s_per_image": timing.wall / batch, "cpu_s": timing.cpu,
            "nfe_forward": prior.nfe.forward // batch, "nfe_backward": prior.nfe.backward // batch,  # solve() resets them
            "peak_mib": mem["peak_bytes"] / 2**20, "finite": bool(torch.isfinite(x_hat).all())}


def spgd(rep: Report, device: torch.device, full: bool, batches: list[int]) -> None:
    size = 256 if full else 64
    over = {} if full else {"num_steps": 4, "warmup_steps": 2}
    apply_speed_flags({"tf32": False}, device)
    for label, options in (("fp32", {}), ("bf16", {"autocast": "bf16"})):
        prior = build_prior(64, 32, device, full, **options)
        solve_timed("spgd", prior, 1, size, device, num_steps=2, warmup_steps=1)  # warm-up
        for batch in batches:
            rep.add("spgd", variant=label, batch=batch, size=size, **solve_timed("spgd", prior, batch, size, device,
                                                                                **over))
        del prior


def _demo_images(root: Path, size: int, count: int) -> Path:
    """The demo photographs upscaled (bicubic) to size x size, with a manifest of their sha256."""
    import hashlib

    from PIL import Image

    src = json.loads((ROOT / "datasets" / "demo.json").read_text())
    root.mkdir(parents=True, exist_ok=True)
    images = []
    for item in src["images"][:count]:
        img = Image.open(ROOT / "datasets" / "demo" / item["file"]).convert("RGB").resize((size, size),
                                                                                          Image.BICUBIC)
        img.save(root / item["file"])
        images.append({"id": item["id"], "file": item["file"],
                       "sha256": hashlib.sha256((root / item["file"]).read_bytes()).hexdigest()})
    manifest = root.with_suffix(".json")
    manifest.write_text(json.dumps({"dataset": f"demo{size}", "title": f"demo photographs at {size}x{size}",
                                    "images": images}, indent=1))
    return manifest


def _random_checkpoint(path: Path, flags: dict[str, Any], seed: int) -> None:
    torch.manual_seed(seed)
    unet = create_unet(**{**flags, "use_fp16": False})
    with torch.no_grad():  # zero-initialised output convolutions would make eps identically 0
        for m in unet.modules():
            if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)) and not m.weight.any():
                m.reset_parameters()
                m.weight.mul_(0.1)
    torch.save(unet.state_dict(), path)


def harness_protocol(work: Path, full: bool) -> Path:
    """A copy of table1.yaml on random-weight checkpoints and 2 upscaled demo images, smoke settings."""
    size = 256 if full else 64
    proto = yaml.safe_load((ROOT / "bench" / "protocols" / "table1.yaml").read_text())
    manifest = _demo_images(work / f"demo{size}", size, 2)
    proto.update(name="gpu-check", description="table1 on random-weight UNets (benchmarks/gpu_check.py)",
                 smoke=True, reference=None, metrics={**proto["metrics"], "lpips": "alex"})
    for ds_name, spec in proto["datasets"].items():
        preset = spec["prior"]
        flags = dict(SPECS[preset].flags) if full else small_config(image_size=size, num_channels=32)
        ckpt = work / f"{ds_name}_random.pt"
        _random_checkpoint(ckpt, flags, seed=len(ds_name))
        spec.update(prior=str(ckpt), unet=preset if full else flags, image_size=size, manifest=str(manifest),
                    root=str(manifest.with_suffix("")), count=2)
    path = work / "gpu-check.yaml"
    path.write_text(yaml.safe_dump(proto, sort_keys=False))
    return path


def _bench(args: list[str], timeout: float, log: Path) -> tuple[int | str, float, str]:
    """`python -m bench ARGS` with its output in `log` (kept when the command runs out of time)."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        try:
            rc: int | str = subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, stdout=fh,
                                           stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = f"timed out after {timeout:.0f} s"
    return rc, time.perf_counter() - start, log.read_text()[-4000:]


def harness(rep: Report, device: torch.device, full: bool, work: Path, timeout: float, only: str = "") -> None:
    protocol = harness_protocol(work, full)
    results = work / "results"
    common = ["--protocol", str(protocol), "--results", str(results)]
    run = ["run", *common, "--device", str(device), "--batch-size", "2", *(["--solvers", only] if only else [])]
    rc, secs, tail = _bench(run, timeout, work / "bench_run.log")
    rep.add("harness", step="run", rc=rc, seconds=secs, output_tail=tail[-2500:])
    records = []
    for f in sorted((results / "records").glob("*.jsonl")) if (results / "records").exists() else []:
        records += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    counts: dict[str, int] = {}
    for r in records:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    bad = [f"{r.get('dataset')}/{r.get('task')}/{r.get('solver')}: {r.get('status')} {r.get('message', '')}"[:300]
           for r in records if r.get("status") != "ok"]
    peaks = {f"{r.get('dataset')}/{r.get('solver')}/{r.get('task')}": r.get("peak_mem_mb") for r in records}
    batches = sorted({r.get("batch_size") for r in records if r.get("batch_size") is not None})
    rep.add("harness", step="records", n=len(records), statuses=counts, not_ok=bad[:40], batch_sizes=batches,
            max_peak_mem_mb=max((v for v in peaks.values() if isinstance(v, (int, float))), default=None),
            seconds_in_records=round(sum(float(r.get("seconds", 0) or 0) for r in records), 1))
    rc2, secs2, tail2 = _bench(run, timeout, work / "bench_rerun.log")
    rep.add("harness", step="rerun (resume: nothing to compute)", rc=rc2, seconds=secs2, output_tail=tail2[-1500:])
    rc3, secs3, tail3 = _bench(["table", *common], timeout, work / "bench_table.log")
    table = results / "table1.md"
    rep.add("harness", step="table", rc=rc3, seconds=secs3, output_tail=tail3[-1500:],
            table=table.read_text()[-6000:] if table.exists() else None)


def dpps(rep: Report, device: torch.device, full: bool) -> None:
    size, batch, steps = (256, 8, 20) if full else (64, 2, 4)
    apply_speed_flags({"tf32": False}, device)
    prior = build_prior(64, 32, device, full)
    solve_timed("dpps", prior, 1, size, device, num_steps=2)  # warm-up
    row = solve_timed("dpps", prior, batch, size, device, num_steps=steps)
    rep.add("dpps", batch=batch, size=size, steps=steps, s_per_step=row["seconds"] / steps, **row)


def compiled(rep: Report, device: torch.device, full: bool) -> None:
    size = 256 if full else 64
    over = {} if full else {"num_steps": 4, "warmup_steps": 2}
    apply_speed_flags({"tf32": False}, device)
    prior = build_prior(64, 32, device, full, compile=True)
    rep.add("compile", solve="first (includes compilation)", **solve_timed("spgd", prior, 1, size, device, **over))
    rep.add("compile", solve="second", **solve_timed("spgd", prior, 1, size, device, **over))


# ---------------------------------------------------------------------------------------------- report
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}")
    return str(v)


def markdown(rows: list[Row]) -> str:
    lines = ["# GPU check (benchmarks/gpu_check.py)", "",
             "Measured by `python -m benchmarks.gpu_check`; every number below comes from this run.", ""]
    sections: dict[str, list[Row]] = {}
    for r in rows:
        sections.setdefault(r["section"], []).append(r)
    for name, rs in sections.items():
        lines += [f"## {name}", ""]
        keys: list[str] = []
        for r in rs:
            for k in r:
                if k not in keys and k not in ("section", "traceback", "output_tail", "table", "events"):
                    keys.append(k)
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for r in rs:
            lines.append("| " + " | ".join(_fmt(r.get(k, "")).replace("|", "/") for k in keys) + " |")
        for r in rs:
            for k in ("table", "output_tail", "traceback"):
                if r.get(k):
                    lines += ["", f"{k} ({r.get('step', r.get('status', ''))}):", "", "```", str(r[k]), "```"]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "results" / "gpu-check")
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="CPU size: 64x64 reduced UNet, few steps (tests this script)")
    p.add_argument("--sections", default="machine,audit,network,harness,spgd,dpps,compile")
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu_check"))
    p.add_argument("--budget", type=float, default=0,
                   help="seconds for the whole run (0: no limit); a section is skipped when less than its usual "
                        "need is left (a lease's time is short)")
    p.add_argument("--harness-timeout", type=float, default=420)
    p.add_argument("--harness-solvers", default="", help="comma list for the harness section (default: the protocol's)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    full = not args.quick
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: use --device cpu --quick to test the script", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rep = Report(args.out)
    batches = [1, 8, 16] if full else [1, 2]
    wanted = [s for s in args.sections.split(",") if s]
    run: dict[str, Callable[[], None]] = {
        "machine": lambda: machine(rep, device),
        "audit": lambda: audit(rep, device),
        "network": lambda: network(rep, device, full, batches),
        "spgd": lambda: spgd(rep, device, full, [1]),
        "harness": lambda: harness(rep, device, full, args.work, args.harness_timeout, args.harness_solvers),
        "dpps": lambda: dpps(rep, device, full),
        "compile": lambda: compiled(rep, device, full),
    }
    unknown = sorted(set(wanted) - set(run))
    if unknown:
        print(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(run)}", file=sys.stderr)
        return 2
    need = {"audit": 60, "network": 40, "harness": 300, "spgd": 90, "dpps": 30, "compile": 180}  # seconds
    for name in wanted:
        left = args.budget - (time.perf_counter() - rep.t0)
        if args.budget and left < need.get(name, 0):
            rep.add(name, status=f"skipped: {left:.0f} s of the --budget left, the section needs ~{need[name]} s")
            continue
        rep.section(name, run[name])
    rep.log(f"wrote {args.out / 'gpu_check.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
