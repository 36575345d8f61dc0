"""The protocol's `prior:` string -> a ready prior on the run's device, and what identifies it.

`prior:` is one of
  * a registered name (priors.registry.SPECS: ffhq256, imagenet256, lsun_bedroom256) or "gaussian";
  * a path to a checkpoint file (the UNet flags come from the dataset's `unet:` key: a dict of
    guided-diffusion flags, or a registered name whose flags to reuse);
  * "module:function": `function(image_size=...)` of an importable module returns the prior.

Speed options (`speed:` dict of the protocol / CLI): `precision` (fp32 | bf16 | fp16 autocast),
`channels_last`, `compile`, `checkpointing` concern the prior; they are ADMPrior options. A prior
that is not an ADM checkpoint takes them only if it accepts them (a module:function whose signature
has the keyword); fp32 / false values are accepted everywhere. Other speed keys (tf32, ...) are not
the prior's business and are ignored here.

Every problem is a `BenchError` with one line naming it and the fix.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from pathlib import Path
from typing import Any, Mapping

import torch

from bench.errors import BenchError
from priors.base import DiffusionPrior

PRECISIONS = {"fp32": None, "bf16": "bf16", "fp16": "fp16"}  # precision -> ADMPrior(autocast=...)
PRIOR_SPEED_KEYS = ("precision", "channels_last", "compile", "checkpointing")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


# ------------------------------------------------------------------------------------- speed options
def prior_speed_options(speed: Mapping[str, Any] | None) -> dict[str, Any]:
    """The prior's share of `speed`, validated, as ADMPrior keywords; defaults (fp32 / false) left out."""
    options: dict[str, Any] = {}
    for key in PRIOR_SPEED_KEYS:
        value = (speed or {}).get(key)
        if value is None:
            continue
        if key == "precision":
            if value not in PRECISIONS:
                raise BenchError(f"speed option precision={value!r} is not one of {', '.join(PRECISIONS)}; "
                                 f"use precision: fp32 (exact), bf16 or fp16")
            if PRECISIONS[value] is not None:
                options["autocast"] = PRECISIONS[value]
        elif not isinstance(value, bool):
            raise BenchError(f"speed option {key}={value!r} must be true or false")
        elif value:
            options[key] = True
    return options


def _speed_words(options: Mapping[str, Any]) -> str:
    return ", ".join(f"precision={v}" if k == "autocast" else f"{k}=true" for k, v in options.items())


def _reject_speed(name: str, options: Mapping[str, Any], accepted: set[str] = frozenset()) -> None:
    refused = {k: v for k, v in options.items() if k not in accepted}
    if refused:
        raise BenchError(f"speed option {_speed_words(refused)} applies to ADM checkpoints only; prior {name!r} "
                         f"does not take it: remove it (or use precision: fp32 / false) for this dataset")


# ------------------------------------------------------------------------------------- loading
def load_prior(name: str, image_size: int, device: str | torch.device, speed: dict | None = None,
               unet: dict | str | None = None) -> DiffusionPrior:
    """The prior named by a protocol's `prior:` string, on `device`, checked against `image_size`.

    `speed`: the run's speed options (only precision / channels_last / compile / checkpointing are
    used here); `unet`: the UNet flags for a checkpoint path (dict, or a registered name to reuse).
    """
    from priors import registry

    options = prior_speed_options(speed)
    if unet is not None and not isinstance(unet, (dict, str)):
        raise BenchError(f"prior {name!r}: unet must be a mapping of guided-diffusion flags or a registered "
                         f"name such as 'ffhq256', got {unet!r}")
    if name == "gaussian":
        _reject_unet(name, unet)
        _reject_speed(name, options)
        from priors.gaussian import embedded
        try:
            prior = embedded(image_size=image_size)
        except (OSError, ValueError) as err:
            raise BenchError(f"prior 'gaussian': {err}") from None
    elif name in registry.SPECS or _looks_like_checkpoint(name):
        if name in registry.SPECS and isinstance(unet, str):
            raise BenchError(f"prior {name!r}: unet: {unet!r} (a preset name) applies to checkpoint paths only; "
                             f"registered priors come with their flags: remove unet:")
        known_file = any(Path(name).name in (s.filename, *s.also_named) for s in registry.SPECS.values())
        if name not in registry.SPECS and unet is None and Path(name).is_file() and not known_file:
            raise BenchError(f"prior {name!r}: a checkpoint path needs its UNet flags: add `unet: ffhq256` (a "
                             f"registered prior whose flags to reuse) or `unet: {{image_size: 256, num_channels: "
                             f"128, ...}}` to this dataset in the protocol")
        try:
            prior = registry.load(name, device=device, flags=unet, **options)
        except (registry.CheckpointError, ValueError, OSError) as err:
            raise BenchError(_one_line(f"prior {name!r}: {err}")) from None
    elif ":" in name:
        _reject_unet(name, unet)
        prior = _from_function(name, image_size, options)
    else:
        raise BenchError(unknown_prior_message(name))
    if not isinstance(prior, torch.nn.Module) or not hasattr(prior, "image_shape"):
        raise BenchError(f"prior {name!r} gave a {type(prior).__name__}, not a DiffusionPrior "
                         f"(priors.base.DiffusionPrior); return one from the function")
    prior = prior.to(device)
    want = (3, image_size, image_size)
    if tuple(prior.image_shape) != want:
        raise BenchError(f"prior {name!r} is for images {tuple(prior.image_shape)}, the protocol asks for {want}; "
                         f"set image_size: {prior.image_shape[-1]} in the protocol")
    return prior


def _looks_like_checkpoint(name: str) -> bool:
    """An existing path, or a name ending like a checkpoint file (then "not found" is the right message)."""
    return Path(name).exists() or (":" not in name and Path(name).suffix in CHECKPOINT_SUFFIXES)


def _reject_unet(name: str, unet: dict | str | None) -> None:
    if unet is not None:
        raise BenchError(f"prior {name!r}: unet: flags apply to checkpoint paths only; remove unet: for this dataset")


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def unknown_prior_message(name: str) -> str:
    """For a `prior:` that is no registered name, no existing path and no module:function."""
    from priors import registry

    names = registry.available()
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"unknown prior {name!r}; {hint}registered: {', '.join(names)}; or a path to a .pt file "
            f"(with unet: flags), or module:function")


def _from_function(name: str, image_size: int, options: dict[str, Any]) -> Any:
    module_name, _, fn_name = name.partition(":")
    if not module_name or not fn_name:
        raise BenchError(f"prior {name!r}: write module:function, e.g. mypriors:build (function(image_size=...) "
                         f"returns the prior)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BenchError(f"prior {name!r}: cannot import module {module_name!r} ({err}); check the name, or run "
                         f"from the folder that holds it / add that folder to PYTHONPATH") from None
    except Exception as err:  # noqa: BLE001 - the user's module fails on import: say where, no traceback
        raise BenchError(_one_line(f"prior {name!r}: importing module {module_name!r} failed "
                                   f"({type(err).__name__}: {err}); fix the module")) from None
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None))]
        close = difflib.get_close_matches(fn_name, public, n=1, cutoff=0.6)
        hint = f"did you mean {module_name}:{close[0]}? " if close else ""
        what = "no function" if fn is None else "a non-callable attribute"
        raise BenchError(f"prior {name!r}: module {module_name!r} has {what} {fn_name!r}; {hint}"
                         f"define {fn_name}(image_size) returning the prior, or fix the name")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if params and "image_size" not in params and not var_kw:
        raise BenchError(f"prior {name!r}: {fn_name}() must accept the keyword image_size "
                         f"(called as {fn_name}(image_size={image_size}))")
    accepted = set(options) if var_kw else {k for k in options if k in params}
    _reject_speed(name, options, accepted)
    return fn(image_size=image_size, **options)


def missing_checkpoint(name: str) -> str | None:
    """For a registered checkpoint name: None when its file is in place, else the message naming it."""
    from priors import registry

    if name not in registry.SPECS:
        return None
    try:
        registry.find_checkpoint(registry.SPECS[name])
    except registry.CheckpointError as err:
        return str(err)
    return None


# ------------------------------------------------------------------------------------- identity
def prior_identity(prior: torch.nn.Module, name: str, speed: dict | None = None,
                   unet: dict | str | None = None) -> dict:
    """What decides the prior's outputs, for the config hash.

    Checkpoint file name and sha256 (registered name or path), an exact prior's parameters, the
    non-default speed options (precision, channels_last, compile, checkpointing) and the UNet flags
    given for a path. Defaults are left out, so an fp32 run keeps the identity it always had.
    """
    from priors import registry

    ident: dict[str, Any] = {"name": name, "class": f"{type(prior).__module__}.{type(prior).__qualname__}",
                             "image_shape": list(prior.image_shape)}
    params = getattr(prior, "parameters_dict", None)
    if callable(params):
        ident["parameters"] = params()
    path: Path | None = None
    if name in registry.SPECS:
        path = registry.find_checkpoint(registry.SPECS[name])
    elif ":" not in name and Path(name).is_file():
        path = Path(name)
    if path is not None:
        ident["checkpoint"] = {"file": path.name, "sha256": registry.cached_sha256(path)}
    options = prior_speed_options(speed)
    if options:
        ident["speed"] = {("precision" if k == "autocast" else k): v for k, v in sorted(options.items())}
    if unet is not None:
        ident["unet"] = dict(registry.SPECS[unet].flags) if isinstance(unet, str) and unet in registry.SPECS else unet
        if isinstance(unet, str):
            ident["unet_preset"] = unet
    return ident
