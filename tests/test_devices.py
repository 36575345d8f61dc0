"""bench/devices.py: `--device` validated against this torch build and machine; torchrun picks its GPU."""
from __future__ import annotations

import pytest
import torch

from bench.devices import resolve_device
from bench.errors import BenchError


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine with two CUDA GPUs, as far as resolve_device can tell; set_device calls are recorded."""
    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return chosen


def test_cpu_only_torch(cpu_only):
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(" CPU ") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(BenchError) as err:
            resolve_device(name)
        assert str(err.value) == (f"device {name!r} requested but this torch build has no CUDA (torch "
                                  f"{torch.__version__}); install a CUDA build of torch or use --device cpu")


def test_cuda_build_without_a_visible_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    with pytest.raises(BenchError, match=r"no CUDA GPU is visible .*built for CUDA 12.4.*CUDA_VISIBLE_DEVICES"):
        resolve_device("cuda")


@pytest.mark.parametrize("name", ["tpu", "gpu", "meta", "cuda:x", "cuda:-1", "", "xpu"])
def test_unknown_devices(cpu_only, name):
    if not name:  # empty means "not given"
        assert resolve_device(name) == torch.device("cpu")
        return
    with pytest.raises(BenchError) as err:
        resolve_device(name)
    assert str(err.value) == f"unknown device {name!r}; use cpu, cuda, cuda:N (or mps)"


def test_gpu_index_beyond_the_count(two_gpus):
    with pytest.raises(BenchError, match=r"device cuda:3 \('cuda:3'\) requested but only 2 CUDA GPU\(s\) are "
                                         r"visible \(cuda:0..cuda:1\)"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and two_gpus == [torch.device("cuda", 1)]
    assert resolve_device(None) == torch.device("cuda", 0)


def test_torchrun_rank_gets_its_own_gpu(two_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device(None) == torch.device("cuda", 1)
    assert two_gpus == [torch.device("cuda", 1)] * 2  # set_device(LOCAL_RANK): no context on GPU 0
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index wins
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(BenchError, match=r"cuda:2 \('cuda' under torchrun, LOCAL_RANK=2\).*only 2 CUDA GPU"):
        resolve_device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "one")
    with pytest.raises(BenchError, match="LOCAL_RANK='one' is not an integer"):
        resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")  # LOCAL_RANK concerns GPUs only
