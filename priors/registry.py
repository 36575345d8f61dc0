"""Named priors and checkpoint loading: `load("ffhq256" | "imagenet256" | "lsun_bedroom256" | "gaussian" | path)`.

The three 256x256 unconditional ADM checkpoints of the restoration literature (spec solvers-seed.md
§6.4, solvers-baselines.md §1.1) with their guided-diffusion flags, file names and official links:

* ffhq256: `ffhq_10m.pt`, DPS (github DPS2022/diffusion-posterior-sampling README, Google Drive folder
  1jElnRoFv7b31fG0v6pTSQkelbSX3xGZh); direct file id 1BGwhRWUoguF-D8wlZ65tf227gp3cDUDh as used by
  DAPS `download.sh` (github zhangbingliang2019/DAPS, commit 098df6b).
* imagenet256: `256x256_diffusion_uncond.pt`, openai/guided-diffusion README.
* lsun_bedroom256: `lsun_bedroom.pt`, openai/guided-diffusion README.

Loading never falls back to random weights (the reference repositories print the exception and go on
with a random network, spec seed §6.4): a missing, truncated, foreign, wrong-architecture or
wrong-checksum file raises `CheckpointError` naming the file and the fix.
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from common.fileio import sha256_file
from priors.base import DiffusionPrior

ENV_DIR = "RESTOREBENCH_CHECKPOINTS"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, not a checkpoint, of another architecture or corrupted."""


@dataclass(frozen=True)
class CheckpointSpec:
    """Everything needed to find, fetch, verify and build one named checkpoint."""

    name: str
    filename: str
    url: str
    flags: Mapping[str, Any]
    source: str  # where the URL is documented
    size: int | None = None  # bytes; None where no authoritative value is known
    sha256: str | None = None  # None: verify size only, print the computed hash so users can pin it
    also_named: tuple[str, ...] = field(default=())  # file names other repos use for the same file


_ADM256 = {
    "image_size": 256, "channel_mult": "", "num_heads": 4, "num_head_channels": 64,
    "num_heads_upsample": -1, "learn_sigma": True, "class_cond": False, "dropout": 0.0,
    "use_scale_shift_norm": True, "resblock_updown": True, "use_fp16": False,
    "use_new_attention_order": False, "use_checkpoint": False,
}

SPECS: dict[str, CheckpointSpec] = {
    "ffhq256": CheckpointSpec(
        name="ffhq256",
        filename="ffhq_10m.pt",
        url="https://drive.google.com/uc?export=download&id=1BGwhRWUoguF-D8wlZ65tf227gp3cDUDh",
        flags={**_ADM256, "num_channels": 128, "num_res_blocks": 1, "attention_resolutions": "16"},
        source=("DPS README (github DPS2022/diffusion-posterior-sampling): Drive folder "
                "https://drive.google.com/drive/folders/1jElnRoFv7b31fG0v6pTSQkelbSX3xGZh ; file id from "
                "DAPS download.sh (github zhangbingliang2019/DAPS)"),
        also_named=("ffhq256.pt",),
    ),
    "imagenet256": CheckpointSpec(
        name="imagenet256",
        filename="256x256_diffusion_uncond.pt",
        url="https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt",
        flags={**_ADM256, "num_channels": 256, "num_res_blocks": 2, "attention_resolutions": "32,16,8"},
        source="openai/guided-diffusion README, 'Download pre-trained models'",
        also_named=("imagenet256.pt",),
    ),
    "lsun_bedroom256": CheckpointSpec(
        name="lsun_bedroom256",
        filename="lsun_bedroom.pt",
        url="https://openaipublic.blob.core.windows.net/diffusion/jul-2021/lsun_bedroom.pt",
        flags={**_ADM256, "num_channels": 256, "num_res_blocks": 2, "attention_resolutions": "32,16,8",
               "dropout": 0.1},  # trained with dropout 0.1 (README flags); inactive at evaluation
        source="openai/guided-diffusion README, 'Download pre-trained models'",
    ),
}


def available() -> list[str]:
    """Names `load` accepts (besides a path to a .pt file)."""
    return [*SPECS, "gaussian"]


def checkpoint_dir() -> Path:
    """$RESTOREBENCH_CHECKPOINTS or ./checkpoints."""
    return Path(os.environ.get(ENV_DIR) or "checkpoints")


def fix_hint(spec: CheckpointSpec, path: Path) -> str:
    return (f"run `make checkpoints NAMES={spec.name}` (or `python -m bench checkpoints {spec.name}`) "
            f"or download {spec.url} to {path}")


# --------------------------------------------------------------------------- loading
def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", *,
         flags: Mapping[str, Any] | str | None = None, **options: Any) -> DiffusionPrior:
    """A ready prior by name ("ffhq256", "imagenet256", "lsun_bedroom256", "gaussian") or by checkpoint path.

    For a path, `flags` gives the guided-diffusion model flags (a dict, or the name of a registered
    checkpoint whose flags to use); a file named like a registered checkpoint uses that entry's flags.
    `options` go to `ADMPrior` (autocast, channels_last, compile, checkpointing) or, for "gaussian",
    to `priors.gaussian.embedded`.
    """
    key = str(name_or_path)
    if key == "gaussian":
        from priors.gaussian import embedded  # written by another module owner; imported on demand
        return embedded(**options).to(device)
    if key in SPECS:
        spec = SPECS[key]
        return _load_adm(find_checkpoint(spec), _merge_flags(spec.flags, flags), device, spec, spec.name, options)
    path = Path(key)
    if path.suffix not in (".pt", ".pth", ".ckpt", ".bin") and not path.exists():
        raise ValueError(f"unknown prior {key!r}: use one of {available()} or a path to a .pt checkpoint")
    spec = next((s for s in SPECS.values() if path.name in (s.filename, *s.also_named)), None)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: check the path"
                              + (f", or {fix_hint(spec, path)}" if spec else ""))
    if isinstance(flags, str):
        if flags not in SPECS:
            raise ValueError(f"flags={flags!r} is not a registered checkpoint; use one of {list(SPECS)} or a dict")
        base, flags = dict(SPECS[flags].flags), None
    elif spec is not None:
        base = dict(spec.flags)
    elif flags is None:
        raise ValueError(f"{path}: pass the UNet flags, e.g. load(path, flags={{'image_size': 256, "
                         f"'num_channels': 128, ...}}) or flags='ffhq256' to reuse a registered configuration")
    else:
        base = {}
    return _load_adm(path, _merge_flags(base, flags), device, spec, path.stem, options)


def _merge_flags(base: Mapping[str, Any], extra: Mapping[str, Any] | str | None) -> dict[str, Any]:
    if isinstance(extra, str):
        raise ValueError("flags given as a name only apply to checkpoint paths")
    merged = dict(base)
    merged.update({k: v for k, v in (extra or {}).items() if k != "model_path"})
    return merged


def find_checkpoint(spec: CheckpointSpec, directory: Path | None = None) -> Path:
    """The file of a registered checkpoint in the checkpoint directory (or its other usual names)."""
    directory = directory or checkpoint_dir()
    for fname in (spec.filename, *spec.also_named):
        if (directory / fname).is_file():
            return directory / fname
    path = directory / spec.filename
    raise CheckpointError(f"checkpoint for prior '{spec.name}' not found at {path}: {fix_hint(spec, path)} "
                          f"(set ${ENV_DIR} to use another directory)")


def _load_adm(path: Path, flags: dict[str, Any], device: str | torch.device, spec: CheckpointSpec | None,
              name: str, options: dict[str, Any]) -> DiffusionPrior:
    from priors.adm import ADMPrior, create_unet

    if spec is not None:
        verify_file(path, spec)
    state = read_state_dict(path, spec)
    with torch.device("meta"):
        unet = create_unet(**{**flags, "use_fp16": False})
    check_architecture(unet.state_dict(), state, path, flags)
    unet.load_state_dict(state, strict=True, assign=True)
    unet = unet.float().to(device)
    if flags.get("use_fp16"):
        unet.convert_to_fp16()
    return ADMPrior(unet, name=name, **options)


def read_state_dict(path: Path, spec: CheckpointSpec | None = None) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True) with errors that say what is wrong with the file and how to fix it."""
    fix = fix_hint(spec, path) if spec else "re-create or re-download the file"
    with open(path, "rb") as fh:
        head = fh.read(4)
    is_zip = head.startswith(b"PK\x03\x04")
    if not (is_zip or head[:1] == b"\x80"):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (starts with {head!r}, expected a zip or "
                              f"pickle file; an HTML page from a failed download?): delete it and {fix}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"{path} could not be read as a checkpoint, it is probably truncated or corrupted "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}): delete it and {fix}") from exc
    state = _unwrap_state_dict(obj)
    if state is None:
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a model state dict (name -> tensor): "
                              f"use the checkpoint file of the network itself; {fix}")
    return state


def _unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    for key in ("state_dict", "model", "ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        return None
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def check_architecture(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                       path: Path, flags: Mapping[str, Any], show: int = 5) -> None:
    """Raise CheckpointError listing missing / unexpected keys and shape mismatches (the first few of each)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" (+{len(items) - show} more)" if len(items) > show else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:show])}{more}")
    shown = {k: flags[k] for k in ("image_size", "num_channels", "num_res_blocks", "attention_resolutions",
                                   "learn_sigma", "channel_mult") if k in flags}
    raise CheckpointError(f"{path} does not fit the UNet built from flags {shown}: {'; '.join(parts)}. "
                          "Fix: pass the flags the checkpoint was trained with (flags=...), or use the file "
                          "that belongs to this prior name")


# --------------------------------------------------------------------------- verification
def verify_file(path: Path, spec: CheckpointSpec) -> None:
    """Size (when known) and sha256 (when pinned) of a checkpoint file; the hash is cached beside it."""
    fix = fix_hint(spec, path)
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        kind = "truncated" if size < spec.size else "larger than expected"
        raise CheckpointError(f"{path} is {kind}: {size} bytes, expected {spec.size}: delete it and {fix}")
    if spec.sha256 is None:
        return
    digest = cached_sha256(path)
    if digest != spec.sha256:
        raise CheckpointError(f"{path} has sha256 {digest}, expected {spec.sha256} (corrupted or a different "
                              f"file): delete it and {fix}")


def cached_sha256(path: Path) -> str:
    """sha256 of a file, remembered in `<file>.sha256.json` keyed by size and mtime (hashing 2 GB takes seconds)."""
    st = path.stat()
    cache = path.with_name(path.name + ".sha256.json")
    try:
        entry = json.loads(cache.read_text())
        if entry["size"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns:
            return str(entry["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = sha256_file(path)
    try:
        cache.write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}))
    except OSError:
        pass
    return digest
