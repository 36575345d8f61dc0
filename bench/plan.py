"""`python -m bench plan`: how long a protocol will take on this device, before running it.

For every dataset the prior network is timed at the protocol's batch size B (the dataset's own
`batch_size`, else the protocol's, else `--batch-size`): one forward call without gradients, and one
forward call with gradients followed by a vector-Jacobian product to the input (what a backprop solver
does), each after a warm-up, the median of a few repeats. Per solver x task the cost per image is then

    t_image = (nfe_forward - nfe_backward) * t_fwd + nfe_backward * t_fwdbwd
            = nfe_forward * t_fwd + nfe_backward * (t_fwdbwd - t_fwd)

with t_fwd = (forward seconds) / B and t_fwdbwd = (forward-with-grad + backward seconds) / B, and
hours = images * t_image / 3600. Why: every backward NFE of these solvers goes through a network call
that is already counted as a forward NFE (DPS: 1000 forward, 1000 backward = 1000 calls, each
back-propagated), and a back-propagated call costs a forward that records the graph plus the
backward, which is what t_fwdbwd measures. (A solver reporting more backward than forward NFE is
charged max(0, nfe_forward - nfe_backward) plain forwards.) Only the prior network is timed: the
solver's own work (operators, FFTs, DPPS's candidates, PnP-ADMM's DnCNN) is not, so solvers with
0 NFE show 0 h and rows are lower bounds where that work matters.

Peak memory of one batch: the weights plus the activations of one forward+backward at batch B for
solvers with backward NFE, of one forward otherwise; on a GPU the activations are
torch.cuda.max_memory_allocated above what was allocated before the call, on the CPU the growth of
the process's resident memory (peak RSS after resetting the high-water mark, minus RSS before).

`quick` (and wherever batch B would not fit in the free memory, or runs out of it): the network is timed
at batch 1 and time and activation memory are scaled linearly to B. On a GPU a larger batch is usually
faster per image, so the projection is then an upper bound on time.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import torch

import operators
from bench.errors import BenchError
from bench.memory import PeakMemory, is_out_of_memory, release_memory
from bench.protocol import DatasetSpec, Protocol

Clock = Callable[[], float]
MID_STEP = 500  # network calls are timed at diffusion index 500 (the cost does not depend on it)


@dataclass(frozen=True)
class NetTiming:
    """The prior network of one dataset on one device, per call of a whole batch."""

    batch: int  # batch size the figures are for
    t_forward: float  # seconds of one forward call (no gradients) of `batch` images
    t_forward_backward: float  # seconds of one forward-with-grad + VJP call of `batch` images
    mem_forward_mb: float  # weights + activations of one forward call of `batch` images
    mem_forward_backward_mb: float  # weights + activations of one forward+backward call
    measured_batch: int  # batch actually timed (1 when scaled)
    note: str = ""  # why the figures were scaled from batch 1, if they were
    weights_mb: float = 0.0  # parameter and buffer memory of the network

    @property
    def t_forward_per_image(self) -> float:
        return self.t_forward / self.batch

    @property
    def t_forward_backward_per_image(self) -> float:
        return self.t_forward_backward / self.batch

    def scaled(self, batch: int, note: str) -> "NetTiming":
        """Linear scaling of a batch-`self.batch` measurement to `batch` (time and activations; not weights)."""
        f = batch / self.batch
        weights = self.weights_mb
        return replace(self, batch=batch, t_forward=self.t_forward * f, t_forward_backward=self.t_forward_backward * f,
                       mem_forward_mb=weights + (self.mem_forward_mb - weights) * f,
                       mem_forward_backward_mb=weights + (self.mem_forward_backward_mb - weights) * f, note=note)


@dataclass(frozen=True)
class PlanRow:
    """One solver x task x dataset of a protocol: images, NFE per image and projected time on this device."""

    dataset: str
    task: str
    solver: str
    images: int
    batch_size: int
    nfe_forward: int
    nfe_backward: int
    timing: NetTiming | None = None  # None: not measured (measure=False)
    note: str = ""  # unsupported task, oracle, external network...
    supported: bool = True

    @property
    def seconds_per_image(self) -> float | None:
        if self.timing is None or not self.supported:
            return None if self.timing is None else 0.0
        return seconds_per_image(self.nfe_forward, self.nfe_backward, self.timing.t_forward_per_image,
                                 self.timing.t_forward_backward_per_image)

    @property
    def hours(self) -> float | None:
        s = self.seconds_per_image
        return None if s is None else self.images * s / 3600.0

    @property
    def peak_mem_mb(self) -> float | None:
        if self.timing is None or not self.supported or not self.nfe_forward:
            return None
        return self.timing.mem_forward_backward_mb if self.nfe_backward else self.timing.mem_forward_mb


def seconds_per_image(nfe_forward: int, nfe_backward: int, t_fwd: float, t_fwdbwd: float) -> float:
    """(nfe_forward - nfe_backward) plain forwards + nfe_backward back-propagated calls, per image."""
    return max(0, nfe_forward - nfe_backward) * t_fwd + nfe_backward * t_fwdbwd


def total_hours(rows: Sequence[PlanRow]) -> float:
    return sum(r.hours or 0.0 for r in rows)


# ------------------------------------------------------------------------------------------ memory
def free_memory_mb(device: torch.device) -> float | None:
    """Free memory for activations: the GPU's free memory, or the machine's MemAvailable on CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2 ** 20
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


# ------------------------------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward(prior: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        prior.eps(x, MID_STEP)


def _forward_backward(prior: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = prior.eps(xg, MID_STEP)
        torch.autograd.grad(out, xg, grad_outputs=torch.ones_like(out))


def _time_call(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int, clock: Clock) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = clock()
        fn()
        _sync(device)
        times.append(clock() - t0)
    return float(statistics.median(times))


def weights_mb(prior: torch.nn.Module) -> float:
    tensors = list(prior.parameters()) + list(prior.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2 ** 20


def measure_network(prior: torch.nn.Module, batch: int, device: torch.device, repeats: int = 3, warmup: int = 1,
                    clock: Clock = time.perf_counter) -> NetTiming:
    """Time one forward and one forward+VJP call of the prior at `batch` (median of `repeats` after
    `warmup` calls) and the peak memory of each (weights + activations)."""
    x = torch.randn((batch, *prior.image_shape), generator=torch.Generator().manual_seed(0)).to(device)
    w = weights_mb(prior)
    with PeakMemory(device) as mem_f:
        _forward(prior, x)
    with PeakMemory(device) as mem_fb:
        _forward_backward(prior, x)
    t_f = _time_call(lambda: _forward(prior, x), device, repeats, max(0, warmup - 1), clock)
    t_fb = _time_call(lambda: _forward_backward(prior, x), device, repeats, max(0, warmup - 1), clock)
    prior.reset_counters()
    return NetTiming(batch=batch, t_forward=t_f, t_forward_backward=t_fb, mem_forward_mb=w + mem_f.mb,
                     mem_forward_backward_mb=w + mem_fb.mb, measured_batch=batch, weights_mb=w)


def measure_at(prior: torch.nn.Module, batch: int, device: torch.device, quick: bool = False, repeats: int = 3,
               clock: Clock = time.perf_counter) -> NetTiming:
    """The network's timing at `batch`: measured at batch 1, then at `batch` unless `quick`, the projected
    memory does not fit the free memory, or the measurement runs out of memory (then scaled from 1)."""
    one = measure_network(prior, 1, device, repeats=repeats, clock=clock)
    if batch == 1:
        return one
    if quick:
        return one.scaled(batch, f"quick: timed at batch 1, scaled linearly to {batch}")
    projected = one.scaled(batch, "")
    free = free_memory_mb(device)
    if free is not None and projected.mem_forward_backward_mb - one.weights_mb > 0.9 * free:
        return one.scaled(batch, f"batch {batch} needs ~{projected.mem_forward_backward_mb / 1024:.1f} GiB, "
                                 f"{free / 1024:.1f} GiB free: timed at batch 1, scaled linearly")
    try:
        return measure_network(prior, batch, device, repeats=repeats, warmup=1, clock=clock)
    except Exception as err:  # noqa: BLE001 - out of memory only; anything else is re-raised
        if not is_out_of_memory(err):
            raise
    release_memory(device)
    return one.scaled(batch, f"batch {batch} ran out of memory: timed at batch 1, scaled linearly")


# ------------------------------------------------------------------------------------------ priors
def random_weight_prior(name: str, device: torch.device, speed: dict | None = None) -> torch.nn.Module:
    """The registered architecture of `name` (priors/registry.py SPECS[name].flags) with random weights:
    same shapes and cost as the checkpoint (timing does not depend on the weights)."""
    from bench.prior_loading import prior_speed_options
    from priors import registry
    from priors.adm import ADMPrior, create_unet

    if name not in registry.SPECS:
        raise BenchError(f"--random-weights: prior {name!r} is not a registered checkpoint "
                         f"({', '.join(registry.SPECS)}); drop --random-weights for it")
    torch.manual_seed(0)
    with torch.device(device):  # built in place (no CPU copy; `meta` gives shapes only)
        unet = create_unet(**{**registry.SPECS[name].flags, "use_fp16": False})
    return ADMPrior(unet, name=name, **prior_speed_options(speed)).to(device)


def load_plan_prior(ds: DatasetSpec, device: torch.device, speed: dict | None, random_weights: bool) -> torch.nn.Module:
    from bench.prior_loading import load_prior, missing_checkpoint

    missing = missing_checkpoint(ds.prior)
    if missing and random_weights:
        return random_weight_prior(ds.prior, device, speed)
    if missing:
        raise BenchError(f"dataset {ds.name!r}: no checkpoint for prior {ds.prior!r} (run `python -m bench checkpoints "
                         f"{ds.prior}`); timing does not depend on the weights: add --random-weights to plan "
                         f"with random weights of the same network")
    return load_prior(ds.prior, ds.image_size, device, speed=speed, unet=ds.unet)


# ------------------------------------------------------------------------------------------ plan
def dataset_images(ds: DatasetSpec, limit: int | None = None) -> int:
    """Images of a dataset the protocol runs: `count`, else the manifest's length; at most `limit`."""
    n = ds.count
    if n is None:
        from bench import data, protocol
        n = len(data.load_manifest(protocol.repo_path(ds.manifest))["images"])
    return min(n, limit) if limit else n


def dataset_batch(p: Protocol, ds: DatasetSpec, batch_size: int | None, images: int) -> int:
    """--batch-size, else the dataset's `batch_size`, else the protocol's; never more than the images."""
    return max(1, min(batch_size or p.batch_size_for(ds), images))


def plan(protocol: Protocol, device: str | torch.device, batch_size: int | None = None, limit: int | None = None,
         measure: bool = True, *, quick: bool = False, random_weights: bool = False, repeats: int = 3,
         clock: Clock = time.perf_counter, timings: dict[str, NetTiming] | None = None,
         progress: Callable[[str], None] | None = None, threads: int | None = None) -> list[PlanRow]:
    """One PlanRow per dataset x task x solver of `protocol` (in table order).

    `timings` (dataset -> NetTiming) skips the measurement for those datasets (tests, reuse);
    `measure=False` gives rows without timing (images and NFE only). Priors are loaded one dataset at a
    time on `device` and released before the next. CPU threads: `threads`, else what `bench run` would
    use (bench.runner.default_threads); restored afterwards.
    """
    from bench.runner import default_threads

    dev = torch.device(device)
    previous = torch.get_num_threads()
    wanted = threads or default_threads(protocol, dev)
    if wanted:
        torch.set_num_threads(wanted)
    try:
        return _plan(protocol, dev, batch_size, limit, measure, quick, random_weights, repeats, clock, timings,
                     progress)
    finally:
        torch.set_num_threads(previous)


def _plan(protocol: Protocol, dev: torch.device, batch_size: int | None, limit: int | None, measure: bool,
          quick: bool, random_weights: bool, repeats: int, clock: Clock, timings: dict[str, NetTiming] | None,
          progress: Callable[[str], None] | None) -> list[PlanRow]:
    from bench.runner import build_solver

    speed = protocol.speed
    rows: list[PlanRow] = []
    for ds in protocol.datasets:
        images = dataset_images(ds, limit)
        batch = dataset_batch(protocol, ds, batch_size, images)
        if progress:
            progress(f"{ds.name}: loading prior {ds.prior!r}")
        prior = load_plan_prior(ds, dev, speed, random_weights)
        timing = (timings or {}).get(ds.name)
        if timing is None and measure:
            if progress:
                progress(f"{ds.name}: timing the network at batch {1 if quick else batch} on {dev}")
            timing = measure_at(prior, batch, dev, quick=quick, repeats=repeats, clock=clock)
        for task in protocol.tasks:
            A = operators.get(task.name, image_shape=(3, ds.image_size, ds.image_size), seeds=[0],
                              sigma_y=task.sigma_y, shared_params=task.shared_params, **task.params)
            for spec in protocol.solvers:
                solver = build_solver(spec, prior, task.name, ds.name, protocol.smoke)
                rows.append(_row(ds.name, task.name, spec.name, images, batch, solver, A, timing))
        del prior
        release_memory(dev)
    return rows


def _row(dataset: str, task: str, name: str, images: int, batch: int, solver: Any, A: operators.Operator,
         timing: NetTiming | None) -> PlanRow:
    base = dict(dataset=dataset, task=task, solver=name, images=images, batch_size=batch, timing=timing)
    if not solver.supports(A):
        return PlanRow(**base, nfe_forward=0, nfe_backward=0, supported=False, note="unsupported task: not run")
    budget = getattr(solver, "budget", None)
    if budget is None:
        return PlanRow(**base, nfe_forward=0, nfe_backward=0, note="exact (no network)")
    b = budget()
    external = getattr(solver, "external_models", None)
    ext = external() if callable(external) else {}
    models = "; ".join(f"{role}: {what.split(' (')[0]}" for role, what in ext.items())
    note = f"+ {models} (not timed)" if ext else ("no prior NFE: own compute not timed" if b["nfe_forward"] == 0 else "")
    return PlanRow(**base, nfe_forward=int(b["nfe_forward"]), nfe_backward=int(b["nfe_backward"]), note=note)


# ------------------------------------------------------------------------------------------ output
def describe_device(device: str | torch.device, threads: int | None = None) -> str:
    """The device in words: GPU name, or CPU model and torch threads (`threads`, else torch's current)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        load = os.getloadavg()
        busy = f"; load average {load[0]:.1f} / {load[1]:.1f} (1 / 5 min) on {os.cpu_count()} cores"
    except OSError:
        busy = ""
    return f"cpu ({cpu}, {threads or torch.get_num_threads()} torch threads{busy})"


def _h(hours: float | None) -> str:
    if hours is None:
        return "-"
    return f"{hours:.1f}" if hours >= 10 else f"{hours:.2f}"


def _s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f}" if seconds >= 100 else f"{seconds:.4g}"


def _gib(mb: float | None) -> str:
    return "-" if mb is None else f"{mb / 1024:.2f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def format_plan(rows: Sequence[PlanRow], title: str = "", device: str = "") -> str:
    """Markdown: the network timing per dataset, one line per solver x task x dataset, totals, formula."""
    lines = [f"# {title or 'bench plan'}", ""]
    if device:
        lines += [f"Device: {device}", ""]
    datasets = list(dict.fromkeys(r.dataset for r in rows))
    timed = {r.dataset: r for r in rows}
    net = []
    for d in datasets:
        r, t = timed[d], timed[d].timing
        if t is None:
            net.append((d, str(r.images), str(r.batch_size), "-", "-", "-", "-", "not measured"))
            continue
        net.append((d, str(r.images), str(t.batch), f"{t.t_forward_per_image:.4g}",
                    f"{t.t_forward_backward_per_image:.4g}", _gib(t.mem_forward_mb), _gib(t.mem_forward_backward_mb),
                    t.note or f"timed at batch {t.measured_batch}"))
    lines += ["Network per image (s) at the batch size, and peak memory of one batch (GiB, weights + activations):", ""]
    lines += _md_table(("dataset", "images", "batch", "fwd s/img", "fwd+bwd s/img", "mem fwd", "mem fwd+bwd",
                        "measurement"), net)
    lines += ["", "Per solver x task x dataset:", ""]
    body = [(r.dataset, r.task, r.solver, str(r.images), str(r.nfe_forward), str(r.nfe_backward),
             _s(r.seconds_per_image), _h(r.hours), _gib(r.peak_mem_mb),
             r.note) for r in rows]
    lines += _md_table(("dataset", "task", "solver", "images", "NFE fwd", "NFE bwd", "s/image", "hours",
                        "peak GiB", "note"), body)
    measured = any(r.timing for r in rows)
    lines += ["", "Hours per solver and dataset:", ""]
    solver_names = list(dict.fromkeys(r.solver for r in rows))
    per = [(s, *(_h(total_hours([r for r in rows if r.solver == s and r.dataset == d])) if measured else "-"
                 for d in datasets), _h(total_hours([r for r in rows if r.solver == s])) if measured else "-")
           for s in solver_names]
    lines += _md_table(("solver", *datasets, "all"), per)
    total = total_hours(rows)
    lines += ["", f"**Total: {_h(total)} h ({total / 24:.1f} days) on one such device**" if measured
              else "Total: not measured (--no-measure)", "",
              "s/image = (NFE fwd - NFE bwd) x t_fwd + NFE bwd x t_fwd+bwd (each backward NFE goes through a "
              "forward call already counted as a forward NFE); hours = images x s/image / 3600. Only the prior "
              "network is timed (operators, DPPS candidates, external denoisers are not): rows are lower bounds "
              "where a solver's own work matters."]
    notes = sorted({r.timing.note for r in rows if r.timing and r.timing.note})
    if notes:
        lines += ["Scaled measurements assume time and activation memory grow linearly with the batch (on a GPU "
                  "a larger batch is usually faster per image: the hours are then an upper bound)."]
    return "\n".join(lines) + "\n"


def summary_line(rows: Sequence[PlanRow]) -> str:
    """One line for `bench run` to print before it starts."""
    runs = sum(r.images for r in rows if r.supported)
    total = total_hours(rows)
    if not any(r.timing for r in rows):
        return f"plan: {runs} image solves"
    return f"plan: {runs} image solves, ~{_h(total)} h of network time on this device ({total / 24:.1f} days)"
