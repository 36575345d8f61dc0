"""What reduced precision costs in PSNR, measured on the exact Gaussian prior (called by `python -m benchmarks.perf`).

A UNet run under bf16/fp16 autocast sees its input and returns its output in the reduced dtype (and rounds
inside every layer too). `RoundedPrior` applies exactly that input/output rounding to the exact Gaussian prior's
denoiser, so the PSNR change of a solver on it is the part of the precision loss that any reduced-precision
network pays, with the prior's own error taken out: a lower bound on what a real bf16/fp16 UNet costs, measured
on any device. (Autocast around the exact prior itself changes nothing measurable: its FFT and element-wise
operations are not autocast ops.) The solver's own state stays in float32, as with ADMPrior(autocast=...).
The fp32 row goes through the same wrapper (rounding to float32 is the identity), so the rows differ by the
rounding only: the wrapper is a plain DiffusionPrior, whose EDM-view `denoise` is derived from `_model`, which
differs from the exact prior's own `_denoise` by ~0.004 dB in SPGD's PSNR.
"""
from __future__ import annotations

from typing import Callable

import torch

import operators
import solvers
from bench.metrics import psnr
from benchmarks.workload import TASK_PARAMS
from priors.base import DiffusionPrior
from priors.gaussian import GaussianPrior

Tensor = torch.Tensor
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class RoundedPrior(DiffusionPrior):
    """`base` with the network's input and output rounded to `dtype` (one counted call per base call)."""

    def __init__(self, base: DiffusionPrior, dtype: torch.dtype) -> None:
        super().__init__(base.image_shape, base.schedule)
        self.base = base
        self.dtype = dtype
        self.name = f"{base.name}-{dtype}".replace("torch.", "")

    def _model(self, x_k: Tensor, k: Tensor) -> tuple[Tensor, Tensor | None]:
        eps, v = self.base._model(x_k.to(self.dtype).to(x_k.dtype), k)
        return eps.to(self.dtype).to(x_k.dtype), v


def precision_table(tasks: tuple[str, ...], device: torch.device, log: Callable[[str], None],
                    solver: str = "spgd", batch: int = 4, size: int = 64, sigma_y: float = 0.05) -> list[dict]:
    """Mean PSNR of `solver` (its Table 1 settings) on the exact Gaussian prior, fp32 vs bf16 vs fp16 network I/O,
    same images, measurements and seeds; one row per task and precision."""
    prior = GaussianPrior(image_shape=(3, size, size)).to(device)
    rows = []
    for task in tasks:
        seeds = list(range(batch))
        x = prior.sample(batch, [torch.Generator().manual_seed(s) for s in seeds]).clamp(-1, 1).to(device)
        A = operators.get(task, image_shape=(3, size, size), seeds=seeds, sigma_y=sigma_y, **TASK_PARAMS.get(task, {}))
        y = A.measure(x, [torch.Generator().manual_seed(500 + s) for s in seeds])
        reference = None
        for label, dtype in DTYPES.items():  # fp32 through the same wrapper: only the rounding differs
            net = RoundedPrior(prior, dtype)
            gens = [torch.Generator().manual_seed(1000 + s) for s in seeds]
            x_hat = solvers.get(solver, net, task=task).solve(y, A, gens)
            value = float(psnr((x_hat.clamp(-1, 1) + 1) / 2, (x + 1) / 2).mean())  # on [0, 1]
            reference = value if reference is None else reference
            rows.append({"section": "precision", "solver": solver, "task": task, "variant": label, "status": "ok",
                         "batch": batch, "size": size, "psnr_db": value, "delta_db": value - reference,
                         "nfe_forward": net.nfe.forward // batch, "nfe_backward": net.nfe.backward // batch})
            log(f"precision {solver} {task} {label}: PSNR {value:.3f} dB ({value - reference:+.3f})")
    return rows
