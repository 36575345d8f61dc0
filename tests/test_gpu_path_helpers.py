"""Counting logic of benchmarks/gpu_path.py (what it counts, not how long anything takes)."""
from __future__ import annotations

import torch

from benchmarks.gpu_path import RandomOpTimer, noise_entry_clock
from solvers.base import RNG


def test_random_op_timer_counts_random_ops_and_host_reads_exactly():
    g = torch.Generator().manual_seed(0)
    mode = RandomOpTimer()
    with mode:
        x = torch.randn(2, 3, generator=g)  # random op 1
        torch.rand(4, generator=g)  # random op 2
        y = (x * 2).sum()  # neither
        y.item()  # host read 1
        bool(x.abs().max() > 0)  # host read (is_nonzero and/or _local_scalar_dense)
    assert mode.random_calls == 2
    assert mode.host_reads >= 2
    reads_before = mode.host_reads
    with mode:
        torch.zeros(3) + 1  # no random op, no host read
    assert (mode.random_calls, mode.host_reads) == (2, reads_before)


def test_noise_entry_clock_counts_rng_calls_and_restores_the_method():
    original = RNG.randn_like
    rng = RNG([torch.Generator().manual_seed(i) for i in range(2)], 2)
    like = torch.zeros(2, 3, 4, 4)
    with noise_entry_clock() as stats:
        a = rng.randn_like(like)
        rng.randn((5,), like=like)  # goes through randn_like
    assert stats["calls"] == 2 and stats["seconds"] > 0
    assert RNG.randn_like is original
    again = RNG([torch.Generator().manual_seed(i) for i in range(2)], 2).randn_like(like)
    assert torch.equal(a, again)  # the clock does not change the numbers
