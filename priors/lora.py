"""Low-rank adapters (LoRA) on the ADM UNet, for one-step restorers built from a diffusion prior (HYPIR), on PEFT.

The adapter layers are PEFT's (`peft.LoraConfig` + `peft.inject_adapter_in_model`, as HYPIR's official code
configures them; spec hypir.md §1.5, §6.3):

* a wrapped layer (`peft.tuners.lora.Conv2d` / `Conv1d`) computes base(x) + (alpha / r) * B(A(x)); A is a conv
  with the base layer's kernel, stride and padding (in -> r), B a kernel-1 conv (r -> out), no bias, no dropout;
* `init_lora_weights="gaussian"`: A ~ N(0, (1/r)^2) entrywise, B = 0, so at initialisation the adapted network
  equals the base network bit for bit (base(x) + 0); A is drawn from the CPU generator seeded with `seed`;
* targets (spec §6.3, module-name suffixes of priors/adm.py): ResBlock `in_layers.2` (conv1), `out_layers.3`
  (conv2), `skip_connection` (1x1 shortcut, when it is a conv), attention `qkv` and `proj_out`, and the final
  `out.2`. Not adapted: `input_blocks.0.0` (first conv), the time-embedding projections `emb_layers.1` and the
  `time_embed` MLP. The suffixes are resolved here to the exact Conv1d/Conv2d module names (`target_names`) and
  given to PEFT as one anchored pattern, so an Identity shortcut is never targeted.

Saving and loading use PEFT's `get_peft_model_state_dict` / `set_peft_model_state_dict` (keys
'<layer>.lora_A.weight', '<layer>.lora_B.weight'); `remove_lora` unloads (puts every wrapped layer's base layer
back, as PEFT's `unload`) and restores the parameters' `requires_grad` flags that PEFT froze.
`lora_applied(unet, state)` applies a trained adapter for the duration of a `with` block (the prior is shared by
every solver of a run). `weights_sha256(module)` ties an adapter to the exact base weights it was trained on.
PEFT is imported lazily (its import pulls transformers, ~5 s), after common.torchvision_shim.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
import sys
from typing import Any, Iterator, Mapping

import torch
from torch import nn

Tensor = torch.Tensor

#: module-name suffixes adapted on the ADM UNet (spec hypir.md §6.3)
ADM_TARGETS: tuple[str, ...] = ("in_layers.2", "out_layers.3", "skip_connection", "qkv", "proj_out", "out.2")
ADAPTER_NAME = "default"
_FLAGS = "_lora_requires_grad"  # unet.__dict__ key: the requires_grad flags before PEFT froze the base


def _peft() -> Any:
    import common.torchvision_shim  # noqa: F401  (before peft -> transformers -> torchvision)
    import peft
    return peft


def peft_version() -> str:
    """'peft <version>': the LoRA implementation, recorded in adapter metadata."""
    return f"peft {_peft().__version__}"


def target_names(unet: nn.Module, targets: tuple[str, ...] = ADM_TARGETS) -> list[str]:
    """Names of the Conv1d/Conv2d modules of `unet` whose name ends with one of `targets` (in module order)."""
    out = []
    for name, module in unet.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)) and any(name == t or name.endswith("." + t) for t in targets):
            out.append(name)
    return out


def lora_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """name -> PEFT LoRA layer of `unet` (empty when no adapter is applied)."""
    if "peft" not in sys.modules:  # no PEFT layer can exist yet; keeps the check free of the peft import
        return {}
    from peft.tuners.lora import LoraLayer
    return {name: m for name, m in unet.named_modules() if isinstance(m, LoraLayer)}


def apply_lora(unet: nn.Module, rank: int, alpha: float | None = None, targets: tuple[str, ...] = ADM_TARGETS,
               seed: int = 0) -> dict[str, nn.Module]:
    """Inject PEFT LoRA layers into every target conv of `unet` (in place); returns name -> LoRA layer.

    alpha defaults to rank (scale 1, as HYPIR). A is drawn from the CPU generator seeded with `seed`, layer by
    layer in module order (the global RNG state is left as it was), so the initial adapter is reproducible."""
    return _inject(unet, rank, alpha, targets, seed, empty=False)


def _inject(unet: nn.Module, rank: int, alpha: float | None, targets: tuple[str, ...], seed: int,
            empty: bool) -> dict[str, nn.Module]:
    """apply_lora; `empty`: PEFT creates the adapter weights on the meta device (low_cpu_mem_usage), and they are
    then allocated uninitialised, in float32, on their base layer's device, to be filled by `load_lora_state`:
    no random initialisation and no host-device copy."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    if lora_layers(unet):
        raise ValueError("the network already carries a LoRA adapter; call remove_lora first")
    names = target_names(unet, targets)
    if not names:
        raise ValueError(f"no module of the network matches the LoRA targets {list(targets)}")
    peft = _peft()
    config = peft.LoraConfig(r=rank, lora_alpha=float(rank if alpha is None else alpha), lora_dropout=0.0,
                             init_lora_weights="gaussian", bias="none",
                             target_modules="|".join(re.escape(n) for n in names))
    unet.__dict__[_FLAGS] = [(p, p.requires_grad) for p in unet.parameters()]
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        peft.inject_adapter_in_model(config, unet, adapter_name=ADAPTER_NAME, low_cpu_mem_usage=empty)
    layers = lora_layers(unet)
    if empty:
        for layer in layers.values():
            device = layer.get_base_layer().weight.device
            for adapter in (layer.lora_A[ADAPTER_NAME], layer.lora_B[ADAPTER_NAME]):
                adapter.to_empty(device=device).float()
    else:  # PEFT gave the adapters of float16/bfloat16 base layers their dtype: float32, as get_peft_model does
        for p in lora_parameters(unet):
            if p.dtype in (torch.float16, torch.bfloat16):
                p.data = p.data.float()
    return layers


def remove_lora(unet: nn.Module) -> None:
    """Unload: put each LoRA layer's base layer back in its place, drop PEFT's config and restore the
    parameters' requires_grad flags of before `apply_lora`."""
    for name, module in lora_layers(unet).items():
        parent_name, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent_name) if parent_name else unet, child, module.get_base_layer())
    unet.__dict__.pop("peft_config", None)
    for p, flag in unet.__dict__.pop(_FLAGS, []):
        p.requires_grad_(flag)


def lora_state_dict(unet: nn.Module) -> dict[str, Tensor]:
    """The adapter weights only (PEFT's `get_peft_model_state_dict`): '<layer>.lora_A.weight' /
    '<layer>.lora_B.weight' -> tensor (detached copies)."""
    if not lora_layers(unet):
        return {}
    state = _peft().get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
    return {k: v.detach().clone() for k, v in state.items()}


def lora_parameters(unet: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter parameters, in module order (A then B of each layer)."""
    return [p for name, p in unet.named_parameters() if ".lora_A." in name or ".lora_B." in name]


def load_lora_state(unet: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy adapter weights into the LoRA layers (PEFT's `set_peft_model_state_dict`); exactly the adapter's
    keys must be present (strict), with matching shapes, else ValueError naming the first differences."""
    mine = {k: tuple(v.shape) for k, v in lora_state_dict(unet).items()}
    missing = sorted(set(mine) - set(state))
    unexpected = sorted(set(state) - set(mine))
    shapes = [k for k in mine if k in state and tuple(state[k].shape) != mine[k]]
    if missing or unexpected or shapes or not mine:
        raise ValueError(f"adapter does not fit this network: {len(missing)} missing, {len(unexpected)} unexpected, "
                         f"{len(shapes)} mis-shaped keys (first: {(missing + unexpected + shapes)[:3]})")
    result = _peft().set_peft_model_state_dict(unet, dict(state), adapter_name=ADAPTER_NAME)
    if result.unexpected_keys:  # PEFT mapped a key to no parameter (cannot happen after the check above)
        raise ValueError(f"adapter does not fit this network: PEFT left {result.unexpected_keys[:3]} unloaded")


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
    restored afterwards, also on error. The adapter layers are frozen (inference). They are injected empty and
    filled from `state` (no per-call random initialisation; no host-device copy when `state` is on the device)."""
    rank = adapter_rank(state)
    _inject(unet, rank, alpha, targets, seed=0, empty=True)
    try:
        load_lora_state(unet, state)
        for p in lora_parameters(unet):
            p.requires_grad_(False)
        yield unet
    finally:
        remove_lora(unet)


def weights_sha256(module: nn.Module) -> str:
    """sha256 over the module's state dict (names, dtypes, shapes, bytes; LoRA layers excluded, PEFT's
    `.base_layer.` infix removed), cached on the module until its parameters change identity. Ties an adapter
    to the exact base weights."""
    state = {k: v for k, v in module.state_dict().items() if ".lora_" not in k}
    state = {k.replace(".base_layer.", "."): v for k, v in state.items()}
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
