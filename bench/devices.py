"""`--device` -> a torch.device that exists on this machine, or a one-line error saying what to use.

Under torchrun (LOCAL_RANK in the environment) plain `cuda` means this process's GPU,
`cuda:LOCAL_RANK`, and that GPU is made the current one (`torch.cuda.set_device`), so no rank
opens a context on GPU 0 by accident.
"""
from __future__ import annotations

import os

import torch

from bench.errors import BenchError

USE = "use cpu, cuda, cuda:N (or mps)"


def resolve_device(name: str | None) -> torch.device:
    """None -> cuda if available else cpu; validate the rest against this torch build and machine."""
    if name is None or not str(name).strip():
        name = "cuda" if torch.cuda.is_available() else "cpu"
    text = str(name).strip()
    try:
        device = torch.device(text.lower())
    except (RuntimeError, ValueError):
        raise BenchError(f"unknown device {text!r}; {USE}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise BenchError(f"device {text!r} requested but Apple MPS is not available on this machine; "
                             f"use --device cpu")
        return device
    if device.type != "cuda":
        raise BenchError(f"unknown device {text!r}; {USE}")
    return _cuda_device(text, device)


def _cuda_device(text: str, device: torch.device) -> torch.device:
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            raise BenchError(f"device {text!r} requested but this torch build has no CUDA (torch {torch.__version__}); "
                             f"install a CUDA build of torch or use --device cpu")
        raise BenchError(f"device {text!r} requested but no CUDA GPU is visible (torch {torch.__version__}, built "
                         f"for CUDA {torch.version.cuda}); check nvidia-smi and CUDA_VISIBLE_DEVICES, or use "
                         f"--device cpu")
    count = torch.cuda.device_count()
    what = f"{text!r}"
    if device.index is None:
        local_rank = _local_rank()
        if local_rank is not None:
            what = f"{text!r} under torchrun, LOCAL_RANK={local_rank}"
        device = torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
    if device.index >= count:
        raise BenchError(f"device cuda:{device.index} ({what}) requested but only {count} CUDA GPU(s) are "
                         f"visible (cuda:0..cuda:{count - 1}); use one of those, or fewer torchrun processes "
                         f"per node (--nproc-per-node {count})")
    torch.cuda.set_device(device)
    return device


def _local_rank() -> int | None:
    value = os.environ.get("LOCAL_RANK")
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise BenchError(f"LOCAL_RANK={value!r} is not an integer; launch with torchrun or unset it") from None
