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
"""
from __future__ import annotations

import hashlib

import torch


def stream_seed(seed: int, *parts: object, bits: int = 63) -> int:
    text = "\x1f".join([str(int(seed))] + [str(p) for p in parts])
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << bits) - 1)


def generator(seed: int, *parts: object) -> torch.Generator:
    """A CPU torch.Generator for one stream (noise is drawn on CPU, then moved: device-independent)."""
    g = torch.Generator(device="cpu")
    g.manual_seed(stream_seed(seed, *parts))
    return g


def operator_seed(seed: int, task: str, image_key: str, shared: bool) -> int:
    return stream_seed(seed, "operator", task, "shared" if shared else image_key, bits=31)


def noise_generator(seed: int, task: str, image_key: str) -> torch.Generator:
    return generator(seed, "noise", task, image_key)


def solver_generator(seed: int, task: str, image_key: str, solver: str) -> torch.Generator:
    return generator(seed, "solver", task, image_key, solver)
