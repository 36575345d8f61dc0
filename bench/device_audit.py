"""Device audit: prove on a CPU-only machine that a solve never stalls an accelerator.

A solve on a GPU stalls whenever the host reads a device value (`.item()`, `float(t)`, `bool(t)`,
`if t:`, `.tolist()`, `torch.equal`) and slows down on every host-device copy (a CPU tensor used in
device work, `torch.tensor(..., device=...)`, `.to(device)` of a CPU table). `DeviceAudit` counts both;
`audit_solve` runs one solver on one Table 1 task with everything on PyTorch's `meta` device:

* the prior (a one-convolution stand-in network by default, the random-weight small ADM UNet with
  `audit_prior`, or any prior you pass), y, and the solver's streams live on `meta` (shapes only, no
  numbers). A CPU tensor mixed into meta
  work raises ("Tensor on device cpu is not on the expected device meta!") and every cross-device op
  that does not raise is counted as a copy;
* a host read of a meta tensor has no value: the audit counts it and answers True / 0 (so a divergence
  check reads "finite" and the solve goes on), so the number of stalls per solve is measured exactly.

`meta` has no torch.Generator: `bench.seeding.generator(..., device="meta")` gives a CPU generator, and
`operators.noise.randn_per_image` draws on the meta device with it (the same code path as a generator
living on the run's device). Reads of CPU tensors (host-side bookkeeping such as a schedule value) are
not device stalls; they are reported as `cpu_reads`.

Counts are split into segments at every network call (`DeviceAudit.mark`), so the audit reports what
happens per step: `copies_after_first_step` must be 0 (one-time transfers, such as an operator's
parameters at first use, happen in the first step), and `host_reads` is at most one per
`Solver.check_every` divergence checks plus the final one.

Usage: `python -m bench.device_audit [solver ...]` prints the table of every solver x Table 1 task.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import operators
import solvers
from bench import seeding
from priors.adm import ADMPrior, create_unet, small_config
from priors.base import DiffusionPrior
from solvers.base import solver_class

Tensor = torch.Tensor
aten = torch.ops.aten

#: Table 1 operator parameters (bench/protocols/table1.yaml), sized for `image_size`
TABLE1_TASKS: dict[str, dict[str, Any]] = {
    "inpaint_random": {"p_range": (0.8, 0.8)},
    "deblur_gaussian": {"kernel_size": 61, "std": 3.0},
    "deblur_motion": {"kernel_size": 61, "intensity": 0.5},
    "sr4": {"factor": 4},
}
_READ_OPS = {aten._local_scalar_dense.default, aten.equal.default, aten.is_nonzero.default}
_COPY_OPS = {aten._to_copy.default, aten.copy_.default, aten.copy.default}
_FROM_HOST = {torch.tensor, torch.as_tensor, torch.Tensor.new_tensor}


def _is_host_scalar(t: Tensor) -> bool:
    """A 0-dim CPU tensor: CUDA kernels take it as a scalar argument (no copy, no sync)."""
    return t.device.type == "cpu" and t.dim() == 0


@dataclass
class Segment:
    """Counts between two network calls."""

    host_reads: int = 0
    cpu_reads: int = 0
    copies: int = 0
    events: list[str] = field(default_factory=list)


class DeviceAudit:
    """Context manager counting host reads of device tensors and host-device copies.

    host reads: `aten._local_scalar_dense` (item/float/int/bool/if), `aten.equal`, `aten.is_nonzero`
    and copies device -> CPU (`.cpu()`, `.tolist()`, `.numpy()`), on tensors not on the CPU.
    copies: `_to_copy` / `copy_` between devices, any op whose tensors sit on different devices
    (0-dim CPU tensors excepted: they are kernel scalars), and `torch.tensor` / `torch.as_tensor` /
    `new_tensor` of Python data onto a non-CPU device. On `meta`, reads are answered with True / 0 and
    copies to the CPU with zeros (`fake_meta_reads`), so the run goes on and every event is counted.
    `mark()` starts a new segment (audit_solve calls it at every step); `segments[i]` holds the counts
    after step i (segment 0: before the first step ends).
    """

    def __init__(self, fake_meta_reads: bool = True, keep_events: int = 20) -> None:
        self.fake_meta_reads = fake_meta_reads
        self.keep_events = keep_events
        self.segments: list[Segment] = [Segment()]
        self._modes: list[Any] = []

    # ------------------------------------------------------------------ results
    @property
    def host_reads(self) -> int:
        return sum(s.host_reads for s in self.segments)

    @property
    def copies(self) -> int:
        return sum(s.copies for s in self.segments)

    @property
    def cpu_reads(self) -> int:
        return sum(s.cpu_reads for s in self.segments)

    def mark(self) -> None:
        self.segments.append(Segment())

    def events(self) -> list[str]:
        return [f"step {i}: {e}" for i, s in enumerate(self.segments) for e in s.events]

    # ------------------------------------------------------------------ recording
    def _record(self, kind: str, what: str) -> None:
        seg = self.segments[-1]
        setattr(seg, kind, getattr(seg, kind) + 1)
        if kind != "cpu_reads" and len(seg.events) < self.keep_events:
            seg.events.append(f"{'host read' if kind == 'host_reads' else 'copy'}: {what}")

    def __enter__(self) -> "DeviceAudit":
        self._modes = [_FunctionCounter(self), _DispatchCounter(self)]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for m in reversed(self._modes):
            m.__exit__(*exc)
        self._modes = []


class _FunctionCounter(TorchFunctionMode):
    """Python data -> device tensor (invisible below the dispatcher)."""

    def __init__(self, audit: DeviceAudit) -> None:
        super().__init__()
        self.audit = audit

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in _FROM_HOST:
            data = args[1] if func is torch.Tensor.new_tensor else (args[0] if args else kwargs.get("data"))
            device = kwargs.get("device")
            if func is torch.Tensor.new_tensor and device is None:
                device = args[0].device
            if device is not None and torch.device(device).type != "cpu" and not isinstance(data, Tensor):
                self.audit._record("copies", f"{getattr(func, '__name__', func)}(python data, device={device})")
        return func(*args, **kwargs)


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, audit: DeviceAudit) -> None:
        super().__init__()
        self.audit = audit

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        audit = self.audit
        if func in _READ_OPS:
            src = tensors[0]
            if src.device.type == "cpu":
                audit._record("cpu_reads", str(func))
            else:
                audit._record("host_reads", f"{func} of a {src.device.type} tensor {tuple(src.shape)}")
                if src.device.type == "meta" and audit.fake_meta_reads:
                    return _fake_scalar(func, src)
            return func(*args, **kwargs)
        if func in _COPY_OPS:
            if func is aten._to_copy.default:
                src, dst = args[0].device, torch.device(kwargs.get("device") or args[0].device)
            else:
                src, dst = args[1].device, args[0].device
            if src != dst:
                audit._record("copies", f"{func} {src.type} -> {dst.type} {tuple(tensors[0].shape)}")
                if src.type != "cpu" and dst.type == "cpu":
                    audit._record("host_reads", f"{func} {src.type} -> cpu")
                    if src.type == "meta" and audit.fake_meta_reads:
                        return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
            return func(*args, **kwargs)
        devices = {t.device for t in tensors if not _is_host_scalar(t)}
        if len(devices) > 1:
            audit._record("copies", f"{func} mixes devices {sorted(d.type for d in devices)}")
        return func(*args, **kwargs)


def _fake_scalar(func: Any, t: Tensor) -> Any:
    """The answer to a host read of a meta tensor: True for booleans (\"all finite\", \"CG not yet
    converged\": the path that reads most), 0 for numbers (a divergence position of 0 means none)."""
    if func is not aten._local_scalar_dense.default or t.dtype == torch.bool:
        return True
    return 0 if not (t.is_floating_point() or t.is_complex()) else 0.0


# ---------------------------------------------------------------------- solves
def audit_prior(image_size: int = 32, device: str | torch.device = "meta") -> ADMPrior:
    """A random-weight small ADM prior (same architecture family as the 256x256 checkpoints) on `device`."""
    torch.manual_seed(0)
    unet = create_unet(**small_config(image_size=image_size, num_channels=32, attention_resolutions="16"))
    return ADMPrior(unet, name="audit").to(device)


class AuditNetPrior(DiffusionPrior):
    """A one-convolution stand-in network with a learned-range output (eps, v), for fast audits of the
    solver loops: meta kernels run in Python (~1 ms per op), so a UNet makes every step slow. The ADM
    prior itself is audited separately (`audit_prior`)."""

    name = "audit-net"

    def __init__(self, image_size: int = 32) -> None:
        super().__init__((3, image_size, image_size))
        self.net = torch.nn.Conv2d(3, 6, 3, padding=1).requires_grad_(False)

    def _model(self, x_k: Tensor, k: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.net(x_k) * (1 + k.to(x_k.dtype).view(-1, 1, 1, 1) / 1000)
        return out[:, :3], out[:, 3:].tanh()


def audit_operator(task: str, image_size: int, batch: int, sigma_y: float = 0.05) -> operators.Operator:
    """The Table 1 operator of `task` at `image_size` with one parameter set per image (protocol: not shared)."""
    params = dict(TABLE1_TASKS[task])
    if task.startswith("deblur") and params["kernel_size"] // 2 >= image_size:
        params["kernel_size"] = 2 * (image_size // 4) + 1
    return operators.get(task, image_shape=(3, image_size, image_size), sigma_y=sigma_y,
                         seeds=list(range(batch)), shared_params=False, **params)


def _mark_network_calls(prior: DiffusionPrior, audit: DeviceAudit, calls: list[int],
                        mark: bool) -> Callable[[], None]:
    """Count the network calls of `prior` in calls[0] and (mark) start an audit segment at each; returns
    the undo."""
    original = prior._count

    def counted(out: Tensor, batch: int) -> Tensor:
        calls[0] += 1
        if mark:
            audit.mark()
        return original(out, batch)

    prior._count = counted  # type: ignore[method-assign]
    return lambda: prior.__dict__.pop("_count", None)


def mark_checks(solver: solvers.Solver, audit: DeviceAudit) -> Callable[[], None]:
    """Make every `check_finite` call of `solver` end an audit segment (one per iteration, for solvers
    that call no diffusion network, e.g. PnP-ADMM with DnCNN); returns the undo."""
    original = solver.check_finite

    def checked(x: Tensor, where: Any) -> None:
        original(x, where)
        audit.mark()

    solver.check_finite = checked  # type: ignore[method-assign]
    return lambda: solver.__dict__.pop("check_finite", None)


def audit_solve(solver_name: str, task: str, image_size: int = 32, batch: int = 2,
                device: str | torch.device = "meta", prior: DiffusionPrior | None = None,
                rng_device: str = "run", steps: str = "network", **overrides: Any) -> dict[str, Any]:
    """Run `solver_name` on the Table 1 operator of `task` under a `DeviceAudit` and return its counts.

    Everything is on `device` (default meta: no numbers): the prior (default `AuditNetPrior`; pass
    `audit_prior(image_size)` for the small ADM UNet), y = A(x) + noise with the harness's noise streams, and the solver's per-image
    streams (rng_device "run": generators on the device; "cpu": CPU streams copied once per draw).
    overrides: solver hyper-parameters (default: the solver's `smoke` settings). steps: "network" (a
    step ends at each network call of the prior) or "check" (at each `check_finite` call: solvers that
    call no diffusion network, PnP-ADMM with DnCNN).
    Returns host_reads, copies, cpu_reads, network_calls, steps, copies_after_first_step,
    host_reads_per_step, copies_per_step, events (the first few, for messages).
    """
    device = torch.device(device)
    prior = AuditNetPrior(image_size).to(device) if prior is None else prior
    A = audit_operator(task, image_size, batch)
    params = {**type(solvers.get(solver_name, prior, task=task)).smoke, **overrides}
    solver = solvers.get(solver_name, prior, task=task, **params)
    if not solver.supports(A):
        raise solvers.UnsupportedTask(f"{solver_name} does not run {task}")
    keys = [f"audit/{i:05d}" for i in range(batch)]
    gen_device = device if rng_device == "run" else torch.device("cpu")
    x = torch.zeros((batch, *prior.image_shape), device=device)
    y = A.measure(x, [seeding.noise_generator(0, task, k, device=gen_device) for k in keys])
    gens = [seeding.solver_generator(0, task, k, solver_name, device=gen_device) for k in keys]

    if steps not in ("network", "check"):
        raise ValueError(f"steps must be 'network' or 'check', got {steps!r}")
    audit = DeviceAudit()
    network_calls = [0]
    undo = _mark_network_calls(prior, audit, network_calls, steps == "network")
    undo_checks = mark_checks(solver, audit) if steps == "check" else (lambda: None)
    try:
        with audit:
            solver.solve(y, A, gens)
    finally:
        undo()
        undo_checks()
    n_steps = max(len(audit.segments) - 1, 1)
    later = audit.segments[2:]  # after the end of the first step
    return {
        "solver": solver_name, "task": task, "device": device.type, "rng_device": rng_device,
        "host_reads": audit.host_reads, "copies": audit.copies, "cpu_reads": audit.cpu_reads,
        "network_calls": network_calls[0], "steps": n_steps,
        "copies_after_first_step": sum(s.copies for s in later),
        "host_reads_per_step": audit.host_reads / n_steps, "copies_per_step": audit.copies / n_steps,
        "nfe": prior.nfe.as_dict(), "events": audit.events()[:10],
    }


def read_budget(steps: int, check_every: int | None = None, extra: int = 1) -> int:
    """Host reads allowed per solve: one per `check_every` steps (Solver.check_every) plus `extra`."""
    k = check_every or solvers.base.Solver.check_every
    return math.ceil(steps / k) + extra


def builtin_solvers() -> list[str]:
    """The solvers of the package (not those a test or a user module registered)."""
    return [n for n in solvers.available() if solver_class(n).__module__.startswith("solvers.")]


def table1_pairs(names: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(solver, task) for every built-in solver (or `names`) and every Table 1 task it supports."""
    prior = audit_prior(32, "meta")
    out = []
    for name in names or builtin_solvers():
        for task in TABLE1_TASKS:
            if solvers.get(name, prior, task=task).supports(audit_operator(task, 32, 1)):
                out.append((name, task))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.device_audit", description=__doc__.split("\n")[0])
    ap.add_argument("solvers", nargs="*", help="solver names (default: all)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rng-device", choices=("run", "cpu"), default="run")
    a = ap.parse_args(argv)
    print(f"{'solver':10s} {'task':16s} {'steps':>5s} {'reads':>5s} {'reads/step':>10s} {'copies':>6s} "
          f"{'copies after step 1':>19s} {'cpu reads':>9s}")
    for name, task in table1_pairs(a.solvers):
        r = audit_solve(name, task, a.image_size, a.batch, rng_device=a.rng_device,
                        steps="check" if name == "pnp_admm" else "network")
        print(f"{name:10s} {task:16s} {r['steps']:5d} {r['host_reads']:5d} {r['host_reads_per_step']:10.2f} "
              f"{r['copies']:6d} {r['copies_after_first_step']:19d} {r['cpu_reads']:9d}")


if __name__ == "__main__":
    main()
