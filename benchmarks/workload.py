"""What every performance benchmark measures on: the Table 1 tasks, the random-weight ADM network, the batched
problems (operator + measurement) and the network timer with its network-bound limit.

Shared by benchmarks/perf.py, benchmarks/deepinv_side_by_side.py, benchmarks/precision.py and
benchmarks/gpu_path.py, so that none of them imports another (no import cycles)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

import operators
from benchmarks.clocks import Timing, median_timing, timed
from priors.adm import ADMPrior, create_unet, small_config
from priors.base import DiffusionPrior

ROOT = Path(__file__).resolve().parents[1]
TABLE1_TASKS = ("inpaint_random", "deblur_gaussian", "deblur_motion", "sr4")
TASK_PARAMS: dict[str, dict[str, Any]] = {  # bench/protocols/table1.yaml
    "inpaint_random": {"p_range": (0.8, 0.8)},
    "deblur_gaussian": {"kernel_size": 61, "std": 3.0},
    "deblur_motion": {"kernel_size": 61, "intensity": 0.5},
    "sr4": {"factor": 4},
}
SIGMA_Y = 0.05
#: the 256x256 ffhq256 flags (priors/registry.py) for the GPU run
FFHQ256_FLAGS = small_config(image_size=256, num_channels=128, num_res_blocks=1, attention_resolutions="16",
                             num_head_channels=64)


def network_limit(nfe_forward: float, nfe_backward: float, t_fwd: float, t_vjp: float) -> float:
    """Network-bound time of a solve: NFE_fwd * t_fwd + NFE_bwd * t_vjp (NFE counted per batch call)."""
    if min(nfe_forward, nfe_backward, t_fwd, t_vjp) < 0:
        raise ValueError("NFE counts and times must be non-negative")
    return nfe_forward * t_fwd + nfe_backward * t_vjp


def vjp_increment(t_fwd: float, t_fb: float) -> float:
    """What a backward NFE adds: t(forward with autograd + VJP) - t(forward without autograd), >= 0."""
    return max(t_fb - t_fwd, 0.0)


def window(samples: Sequence[Timing], j: int, half: int = 2) -> list[Timing]:
    """The network samples around solve j (samples j-half+1 .. j+half; sample j was taken just before it)."""
    return list(samples[max(j - half + 1, 0): j + half + 1])


# --------------------------------------------------------------------------- network and problems
def build_prior(size: int, width: int, device: torch.device, full: bool, seed: int = 0,
                **options: Any) -> ADMPrior:
    """The ADM UNet with random weights: ffhq256 flags at 256 (`full`), else the reduced-width 64x64 member."""
    flags = dict(FFHQ256_FLAGS) if full else small_config(image_size=size, num_channels=width)
    torch.manual_seed(seed)
    unet = create_unet(**flags)
    with torch.no_grad():  # the zero-initialised output convolutions would make eps identically 0
        for m in unet.modules():
            if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)) and not m.weight.any():
                m.reset_parameters()
                m.weight.mul_(0.1)
    prior = ADMPrior(unet.to(device), name=f"adm{flags['image_size']}-w{flags['num_channels']}-random", **options)
    prior.flags = flags  # type: ignore[attr-defined]
    return prior


def n_parameters(prior: DiffusionPrior) -> int:
    return sum(p.numel() for p in prior.parameters())


@dataclass
class Problem:
    task: str
    A: operators.Operator
    x: torch.Tensor
    y: torch.Tensor
    seeds: list[int]

    def generators(self) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(1000 + s) for s in self.seeds]


def make_problem(task: str, batch: int, size: int, device: torch.device, seed: int = 0,
                 shared_params: bool = False) -> Problem:
    """A fresh operator (its SVD is built lazily inside the solve, as in the harness) and y = A x + noise."""
    seeds = list(range(seed, seed + batch))
    A = operators.get(task, image_shape=(3, size, size), seeds=seeds, sigma_y=SIGMA_Y,
                      shared_params=shared_params, **TASK_PARAMS.get(task, {}))
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device)
    y = A.measure(x, [torch.Generator().manual_seed(s) for s in seeds])
    return Problem(task, A, x, y, seeds)


class NetworkTimer:
    """t_fwd and t_fb of the prior's network at a batch size, same input distribution as the solvers."""

    def __init__(self, prior: DiffusionPrior, batch: int, device: torch.device) -> None:
        self.prior = prior
        self.device = device
        g = torch.Generator().manual_seed(7)
        self.x = torch.randn(batch, *prior.image_shape, generator=g).to(device)
        self.v = torch.randn(batch, *prior.image_shape, generator=g).to(device)
        self.k = torch.full((batch,), 500.0, device=device)
        self.fwd: list[Timing] = []
        self.fb: list[Timing] = []

    def forward(self) -> None:
        with torch.no_grad():
            self.prior._model(self.x, self.k)

    def forward_backward(self) -> None:
        with torch.enable_grad():
            x = self.x.detach().requires_grad_(True)
            eps, _ = self.prior._model(x, self.k)
            torch.autograd.grad(eps, x, grad_outputs=self.v)

    def sample(self, repeats: int) -> None:
        for _ in range(repeats):
            self.fwd.append(timed(self.forward, self.device)[0])
            self.fb.append(timed(self.forward_backward, self.device)[0])

    def around(self, j: int) -> "NetworkTimer":
        """A view holding only the samples taken around solve j (see `window`)."""
        view = NetworkTimer.__new__(NetworkTimer)
        view.__dict__.update(self.__dict__)
        view.fwd, view.fb = window(self.fwd, j), window(self.fb, j)
        return view

    @property
    def t_fwd(self) -> Timing:
        return median_timing(self.fwd)

    @property
    def t_vjp(self) -> Timing:
        f, b = self.t_fwd, median_timing(self.fb)
        return Timing(vjp_increment(f.wall, b.wall), vjp_increment(f.cpu, b.cpu))

    @property
    def t_fb(self) -> Timing:
        return median_timing(self.fb)
