"""Low-rank adapters (LoRA) on the ADM UNet, for one-step restorers built from a diffusion prior (HYPIR).

Our own implementation of the PEFT LoRA maths (PEFT docs "LoRA / Initialization", spec hypir.md §1.5,
§6.3); PEFT itself is not used (its import pulls transformers/torchvision, and the ADM module names
need our own target list anyway):

* a wrapped layer computes base(x) + (alpha / r) * B(A(x)); for a Conv2d, A is a conv with the base
  layer's kernel, stride and padding (in -> r) and B a 1x1 conv (r -> out); for a Conv1d (attention
  qkv / proj_out, kernel 1) both are kernel-1 convs; no bias in A or B;
* Gaussian init: A ~ N(0, (1/r)^2) entrywise, B = 0, so at initialisation the adapted network equals the
  base network bit for bit (base(x) + 0);
* targets (spec §6.3, module-name suffixes of priors/adm.py): ResBlock `in_layers.2` (conv1),
  `out_layers.3` (conv2), `skip_connection` (1x1 shortcut, when it is a conv), attention `qkv` and
  `proj_out`, and the final `out.2`. Not adapted: `input_blocks.0.0` (first conv), the time-embedding
  projections `emb_layers.1` and the `time_embed` MLP.

`lora_applied(unet, state, rank, alpha)` applies a trained adapter for the duration of a `with` block
and restores the original modules afterwards (the prior is shared by every solver of a run).
`weights_sha256(module)` is the checksum that ties an adapter to the exact base weights it was trained on.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator, Mapping

import torch
from torch import nn

Tensor = torch.Tensor

#: module-name suffixes adapted on the ADM UNet (spec hypir.md §6.3)
ADM_TARGETS: tuple[str, ...] = ("in_layers.2", "out_layers.3", "skip_connection", "qkv", "proj_out", "out.2")


class LoRAConv(nn.Module):
    """base(x) + scale * B(A(x)) around a frozen Conv1d / Conv2d (see the module docstring)."""

    def __init__(self, base: nn.Conv1d | nn.Conv2d, rank: int, alpha: float,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.rank = rank
        self.scale = float(alpha) / rank
        conv = nn.Conv2d if isinstance(base, nn.Conv2d) else nn.Conv1d
        device, dtype = base.weight.device, torch.float32
        self.lora_A = conv(base.in_channels, rank, base.kernel_size, stride=base.stride, padding=base.padding,
                           dilation=base.dilation, bias=False, device=device, dtype=dtype)
        self.lora_B = conv(rank, base.out_channels, 1, bias=False, device=device, dtype=dtype)
        with torch.no_grad():
            a = torch.randn(self.lora_A.weight.shape, generator=generator, dtype=dtype) / rank
            self.lora_A.weight.copy_(a.to(device))
            self.lora_B.weight.zero_()

    def forward(self, x: Tensor) -> Tensor:
        h = self.lora_B(self.lora_A(x.to(self.lora_A.weight.dtype)))
        return self.base(x) + (self.scale * h).to(x.dtype)


def target_names(unet: nn.Module, targets: tuple[str, ...] = ADM_TARGETS) -> list[str]:
    """Names of the Conv1d/Conv2d modules of `unet` whose name ends with one of `targets` (in module order)."""
    out = []
    for name, module in unet.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)) and any(name == t or name.endswith("." + t) for t in targets):
            out.append(name)
    return out


def _parent(unet: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (unet.get_submodule(parent_name) if parent_name else unet), child


def apply_lora(unet: nn.Module, rank: int, alpha: float | None = None, targets: tuple[str, ...] = ADM_TARGETS,
               seed: int = 0) -> dict[str, LoRAConv]:
    """Wrap every target conv of `unet` in a `LoRAConv` (in place); returns name -> wrapper.

    alpha defaults to rank (scale 1, as HYPIR). A is drawn from a generator seeded with `seed`, layer by
    layer in module order, so the initial adapter is reproducible."""
    alpha = float(rank if alpha is None else alpha)
    gen = torch.Generator().manual_seed(seed)
    wrapped = {}
    for name in target_names(unet, targets):
        parent, child = _parent(unet, name)
        layer = LoRAConv(getattr(parent, child), rank, alpha, gen)
        setattr(parent, child, layer)
        wrapped[name] = layer
    if not wrapped:
        raise ValueError(f"no module of the network matches the LoRA targets {list(targets)}")
    return wrapped


def remove_lora(unet: nn.Module) -> None:
    """Put the original base modules back in place of every `LoRAConv` of `unet`."""
    for name, module in list(unet.named_modules()):
        if isinstance(module, LoRAConv):
            parent, child = _parent(unet, name)
            setattr(parent, child, module.base)


def lora_state_dict(unet: nn.Module) -> dict[str, Tensor]:
    """The adapter weights only: '<layer>.lora_A.weight' / '<layer>.lora_B.weight' -> tensor (detached copies)."""
    out = {}
    for name, module in unet.named_modules():
        if isinstance(module, LoRAConv):
            out[f"{name}.lora_A.weight"] = module.lora_A.weight.detach().clone()
            out[f"{name}.lora_B.weight"] = module.lora_B.weight.detach().clone()
    return out


def lora_parameters(unet: nn.Module) -> list[nn.Parameter]:
    return [p for m in unet.modules() if isinstance(m, LoRAConv) for p in (m.lora_A.weight, m.lora_B.weight)]


def load_lora_state(unet: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy adapter weights into the wrapped layers; exactly the adapter's keys must be present (strict),
    with matching shapes, else ValueError naming the first differences."""
    mine = {f"{n}.lora_{ab}.weight": getattr(m, f"lora_{ab}").weight
            for n, m in unet.named_modules() if isinstance(m, LoRAConv) for ab in ("A", "B")}
    missing = sorted(set(mine) - set(state))
    unexpected = sorted(set(state) - set(mine))
    shapes = [k for k in mine if k in state and tuple(state[k].shape) != tuple(mine[k].shape)]
    if missing or unexpected or shapes:
        raise ValueError(f"adapter does not fit this network: {len(missing)} missing, {len(unexpected)} unexpected, "
                         f"{len(shapes)} mis-shaped keys (first: {(missing + unexpected + shapes)[:3]})")
    with torch.no_grad():
        for k, p in mine.items():
            p.copy_(state[k].to(device=p.device, dtype=p.dtype))


def adapter_rank(state: Mapping[str, Tensor]) -> int:
    """The rank of an adapter state dict (rows of its first A weight)."""
    for k, v in state.items():
        if k.endswith("lora_A.weight"):
            return int(v.shape[0])
    raise ValueError("the adapter holds no lora_A weight")


@contextlib.contextmanager
def lora_applied(unet: nn.Module, state: Mapping[str, Tensor], alpha: float | None = None,
                 targets: tuple[str, ...] = ADM_TARGETS) -> Iterator[nn.Module]:
    """Within the block, `unet` runs with the adapter `state` (rank read from it); the original modules are
    restored afterwards, also on error. The adapter layers are frozen (inference)."""
    rank = adapter_rank(state)
    apply_lora(unet, rank, alpha, targets)
    try:
        load_lora_state(unet, state)
        for p in lora_parameters(unet):
            p.requires_grad_(False)
        yield unet
    finally:
        remove_lora(unet)


def weights_sha256(module: nn.Module) -> str:
    """sha256 over the module's state dict (names, dtypes, shapes, bytes; LoRA layers excluded), cached on
    the module until its parameters change identity. Ties an adapter to the exact base weights."""
    state = {k: v for k, v in module.state_dict().items() if ".lora_" not in k}
    state = {k.replace(".base.", "."): v for k, v in state.items()}
    key = tuple((k, v.data_ptr(), v.device.type, v._version) for k, v in sorted(state.items()))
    cached = module.__dict__.get("_weights_sha256")
    if cached is not None and cached[0] == key:
        return cached[1]
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().to("cpu").contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    digest = h.hexdigest()
    module.__dict__["_weights_sha256"] = (key, digest)
    return digest
