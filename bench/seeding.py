"""Stable per-image random streams, so a result never depends on batch size, order or sharding.

Every stream is seeded by a SHA-256 hash of its name parts, e.g.
`stream_seed(0, "noise", "ffhq/00000", "sr4")`. The operator's per-image parameters (mask,
kernel), the measurement noise and each solver's randomness use three different streams:

    operator : (protocol seed, "operator", task, dataset/image id)   -- "shared" instead of the id
                                                                        when the protocol shares one
                                                                        mask/kernel over the run
    noise    : (protocol seed, "noise",    task, dataset/image id)
    solver   : (protocol seed, "solver",   task, dataset/image id, solver name)

The seed is the first 8 bytes of the digest, masked to 63 bits (torch.Generator); operator seeds are
masked to 31 bits, since operators seed numpy's legacy RandomState (which takes < 2**32).

Where the numbers are drawn: `device` creates each generator on the run's device (the default of the
harness, `rng_device: run`): noise is drawn where it is used, with no host work and no copy; image i
still draws from stream i, so results are batch-invariant on any one device, but a CUDA generator
(Philox) gives other numbers than a CPU one (Mersenne Twister). `device="cpu"` (`rng_device: cpu`)
keeps CPU streams on any device (drawn on the CPU, then copied once): the same numbers everywhere.
The meta device (the device audit, bench/device_audit.py) has no generators: a CPU generator stands
in, and `operators.noise.randn_per_image` draws on meta with it.
"""
from __future__ import annotations

import hashlib

import torch


def stream_seed(seed: int, *parts: object, bits: int = 63) -> int:
    text = "\x1f".join([str(int(seed))] + [str(p) for p in parts])
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << bits) - 1)


def generator(seed: int, *parts: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded for one stream (meta: a CPU generator, see module docstring)."""
    dev = torch.device(device)
    g = torch.Generator(device="cpu" if dev.type == "meta" else dev)
    g.manual_seed(stream_seed(seed, *parts))
    return g


def operator_seed(seed: int, task: str, image_key: str, shared: bool) -> int:
    return stream_seed(seed, "operator", task, "shared" if shared else image_key, bits=31)


def noise_generator(seed: int, task: str, image_key: str, device: str | torch.device = "cpu") -> torch.Generator:
    """The measurement-noise stream of one image, on `device`."""
    return generator(seed, "noise", task, image_key, device=device)


def solver_generator(seed: int, task: str, image_key: str, solver: str,
                     device: str | torch.device = "cpu") -> torch.Generator:
    """The stream of one solver's randomness for one image, on `device`."""
    return generator(seed, "solver", task, image_key, solver, device=device)
