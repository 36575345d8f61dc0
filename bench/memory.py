"""Peak memory of a block of work, the same way for the runner's records and `bench plan`.

GPU: `torch.cuda.max_memory_allocated` during the block minus what was allocated at its start (the
prior's weights, inputs), so the figure is the block's own working memory. CPU: the process's peak
resident memory during the block above its resident memory at the start (VmHWM after resetting it
through /proc/self/clear_refs, minus VmRSS); 0 where /proc is unavailable.
"""
from __future__ import annotations

import gc
from typing import Any

import torch


def is_out_of_memory(err: BaseException) -> bool:
    """A CUDA (or other allocator) out-of-memory failure."""
    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and "out of memory" in str(err))


def release_memory(device: torch.device) -> None:
    """Free what dropped references held: garbage-collect, then return cached GPU blocks."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def proc_status_mb(field_name: str) -> float | None:
    """A /proc/self/status field in MiB (VmRSS, VmHWM); None where /proc is unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        return None
    return None


def reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """`with PeakMemory(device) as m: ...` then `m.mb`: the block's peak memory above its start (MiB)."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.mb = 0.0
        self.start: float | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2 ** 20
        else:
            self.start = proc_status_mb("VmRSS") if reset_rss_peak() else None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = max(0.0, torch.cuda.max_memory_allocated(self.device) / 2 ** 20 - (self.start or 0.0))
        elif self.start is not None:
            hwm = proc_status_mb("VmHWM")
            self.mb = max(0.0, hwm - self.start) if hwm is not None else 0.0
