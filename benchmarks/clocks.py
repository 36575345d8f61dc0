"""Clocks of the performance benchmark (benchmarks/perf.py): wall/CPU timing, peak memory, and the seconds a solve
spends inside the operator's calls and inside the prior's network (forward calls and the backward passes
through them), so that "outside the network" is measured, not inferred."""
from __future__ import annotations

import ctypes
import gc
import os
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

import operators
from priors.base import DiffusionPrior


@dataclass
class Timing:
    wall: float
    cpu: float


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Timing, Any]:
    """Wall and process CPU time of fn() (CUDA-synchronised on the GPU)."""
    _sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    return Timing(time.perf_counter() - w0, time.process_time() - c0), out


def median_timing(samples: Sequence[Timing]) -> Timing:
    return Timing(statistics.median(s.wall for s in samples), statistics.median(s.cpu for s in samples))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_LIBC = None


def _malloc_setup() -> None:
    """Load glibc's malloc_trim, called before each memory measurement so that memory freed by earlier runs
    is returned to the OS and the RSS baseline holds only live data. (Forcing every allocation through mmap
    with mallopt would make RSS exact but slows the network 10-30x through page faults: not done.)"""
    global _LIBC
    try:
        _LIBC = ctypes.CDLL("libc.so.6")
    except OSError:
        _LIBC = None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory(device: torch.device, interval: float = 0.002) -> Iterator[dict[str, float]]:
    """Peak extra memory (bytes) of the block: CUDA max_memory_allocated, or on the CPU the peak of the
    resident set size above its value at entry, sampled every `interval` s by a thread."""
    result: dict[str, float] = {"peak_bytes": float("nan")}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield result
        _sync(device)
        result["peak_bytes"] = float(torch.cuda.max_memory_allocated(device) - base)
        return
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    base = _rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], _rss_bytes())
        result["peak_bytes"] = float(peak[0] - base)

class OperatorClock:
    """Wall time spent inside an operator's public calls during a solve (outermost calls only; the
    autograd backward through the operator is not included). Sub-operators from `select` are clocked too."""

    METHODS = ("forward", "adjoint", "pinv", "prox")

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0

    def attach(self, A: operators.Operator) -> operators.Operator:
        for name in self.METHODS:
            A.__dict__.pop(name, None)
            if hasattr(type(A), name):
                setattr(A, name, self._wrap(getattr(A, name)))
        A.__dict__.pop("select", None)
        original_select = A.select
        A.select = lambda idx: self.attach(original_select(idx))  # type: ignore[method-assign]
        return A

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def clocked(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                _sync(self.device)
                self.seconds += time.perf_counter() - start
                self.calls += 1
                self._depth -= 1
        return clocked

class NetworkClock:
    """Seconds spent inside the prior's network during a solve.

    forward_s: the prior's `_model` calls (forward, with autograd recording when the solver differentiates);
    backward_s: each backward pass through such a call, from the first gradient reaching one of its outputs
    to the gradient reaching its input (tensor hooks; the operator's own backward, which runs before the
    gradient reaches the network outputs, is not included). On CUDA every boundary is synchronised.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.forward_s = 0.0
        self.backward_s = 0.0
        self.calls = 0

    @property
    def seconds(self) -> float:
        return self.forward_s + self.backward_s

    def _now(self) -> float:
        _sync(self.device)
        return time.perf_counter()

    @contextmanager
    def attached(self, prior: DiffusionPrior) -> Iterator["NetworkClock"]:
        """Clock `prior`'s network inside the block (the prior is restored afterwards)."""
        own = prior.__dict__.get("_model")
        original = prior._model

        def clocked(x_k: torch.Tensor, k: torch.Tensor) -> Any:
            start = self._now()
            out = original(x_k, k)
            self.forward_s += self._now() - start
            self.calls += 1
            if torch.is_grad_enabled() and x_k.requires_grad:
                self._watch_backward(x_k, [o for o in out if isinstance(o, torch.Tensor) and o.requires_grad])
            return out

        prior._model = clocked  # type: ignore[method-assign]
        try:
            yield self
        finally:
            if own is None:
                del prior._model  # back to the class method
            else:
                prior._model = own  # type: ignore[method-assign]

    def _watch_backward(self, x_k: torch.Tensor, outputs: list[torch.Tensor]) -> None:
        began: list[float] = []

        def on_output(grad: torch.Tensor) -> torch.Tensor:
            if not began:
                began.append(self._now())
            return grad

        def on_input(grad: torch.Tensor) -> torch.Tensor:
            if began:
                self.backward_s += self._now() - began.pop()
            return grad

        for out in outputs:
            out.register_hook(on_output)
        x_k.register_hook(on_input)
