"""Let `import torchvision` work on a CPU torch whose paired torchvision wheel is a CUDA build.

torchvision 0.28's wheel links its extension `_C.so` against CUDA libraries that a CPU torch does not
have; the extension does not load, and torchvision's fake-kernel registration for `torchvision::nms`
/ `qnms` then aborts the import (and with it `import torchmetrics` and `import lpips`). Where the
extension does not load we define just those two operator schemas, so the pure-torch parts of
torchvision (models, transforms) import and work; ops that need the compiled code still raise.
Where torchvision is absent or its extension loads (a matching CUDA torch), this is a no-op.
Import it before anything imports torchvision (bench/__init__.py, tests/conftest.py and priors/lora.py, before
`import peft`, do).
"""
from __future__ import annotations

import glob
import importlib.util
import os

import torch

_library = None  # a garbage-collected Library would drop its definitions


def _extension_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True
    found = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "_C*.so"))
    if not found:
        return False
    try:
        torch.ops.load_library(found[0])
    except OSError:
        return False
    return True


def install() -> bool:
    """Define the missing schemas if needed; returns True when the shim is active."""
    global _library
    if _library is not None:
        return True
    if _extension_loads():
        return False
    _library = torch.library.Library("torchvision", "FRAGMENT")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return True


install()
