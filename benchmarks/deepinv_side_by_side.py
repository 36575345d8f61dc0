"""Side by side with DeepInverse (deepinv 0.5.0, the optional `perf` extra): our DPS, DiffPIR and DDRM
against `deepinv.sampling.DPS / DiffPIR / DDRM` at equal NFE, with the same network weights, batch, machine
and process (called by `python -m benchmarks.perf`; deepinv is imported only here, inside functions).

Our UNet is handed to deepinv through `deepinv_denoiser(prior)`: a `deepinv.models.Denoiser` whose
forward(x, sigma) on [0, 1] images is our prior's EDM denoiser on [-1, 1] images,

    D01(x, sigma) = (D(2 x - 1; 2 sigma) + 1) / 2,

one counted network evaluation per call (priors/base.py `denoise`), so deepinv's NFE are counted by our
own counters and the equal-NFE condition is checked, not assumed. The task is random inpainting (80 %
missing, one mask shared by the batch, sigma_y 0.05 on [-1, 1] = 0.025 on [0, 1]): deepinv's DDRM needs a
`DecomposablePhysics`, and `Inpainting` with our mask tensor is exactly our operator (spec
solvers-baselines.md §9.2). deepinv's step counts are chosen so that its counted NFE equal ours
(`matching_steps`, found with a free counting stand-in denoiser before anything is timed).
Each sampler's output differs from ours by the algorithmic differences of spec §9.3 (VP-SDE schedule,
DDRM noise levels, DiffPIR rho scaling); the comparison is of cost at equal network work.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

import operators
import solvers
from benchmarks.clocks import NetworkClock, timed
from benchmarks.workload import NetworkTimer, network_limit
from priors.base import DiffusionPrior

Tensor = torch.Tensor
SIGMA_Y = 0.05  # [-1, 1] units (0.025 on deepinv's [0, 1])
#: our step counts for the comparison (reduced, as the overhead table; the ratio is per network call)
OUR_STEPS = {"dps": 8, "diffpir": 8, "ddrm": 8}


def deepinv_denoiser(prior: DiffusionPrior) -> Any:
    """Our prior as a deepinv Denoiser on [0, 1] images: D01(x, s) = (prior.denoise(2x - 1, 2s) + 1) / 2."""
    from deepinv.models import Denoiser

    class PriorDenoiser(Denoiser):
        def __init__(self) -> None:
            super().__init__(device=prior.device)
            self.prior = prior

        def forward(self, x: Tensor, sigma: float | Tensor, *args: Any, **kwargs: Any) -> Tensor:
            s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
            s = s.expand(x.shape[0]) if s.numel() == 1 else s
            x32 = x.to(torch.float32)
            return ((self.prior.denoise(2 * x32 - 1, 2 * s) + 1) / 2).to(x.dtype)

    return PriorDenoiser()


class _CountingStandIn(torch.nn.Module):
    """A free denoiser (x -> x * 1) that counts forward calls and backward passes, to size deepinv's steps."""

    def __init__(self) -> None:
        super().__init__()
        self.forward_calls = 0
        self.backward_calls = 0

    def forward(self, x: Tensor, sigma: Any = None, *args: Any, **kwargs: Any) -> Tensor:
        self.forward_calls += 1
        out = x * 1.0
        if out.requires_grad:
            def hook(g: Tensor) -> Tensor:
                self.backward_calls += 1
                return g
            out.register_hook(hook)
        return out


def inpainting_problem(batch: int, size: int, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Our inpaint_random operator (one shared mask) and the deepinv Inpainting physics with the same mask."""
    import deepinv as dinv

    seeds = list(range(seed, seed + batch))
    A = operators.get("inpaint_random", image_shape=(3, size, size), seeds=seeds, sigma_y=SIGMA_Y,
                      shared_params=True, p_range=(0.8, 0.8))
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device)
    y = A.measure(x, [torch.Generator().manual_seed(s) for s in seeds])
    mask = A.mask.to(torch.float32).to(device).expand(1, 3, size, size).contiguous()
    physics = dinv.physics.Inpainting(img_size=(3, size, size), mask=mask, device=device,
                                      noise_model=dinv.physics.GaussianNoise(sigma=SIGMA_Y / 2))
    y01 = mask * (y + 1) / 2  # the same measurement on [0, 1]
    return {"A": A, "x": x, "y": y, "physics": physics, "y01": y01, "seeds": seeds}


def deepinv_sampler(name: str, denoiser: Any, steps: int, device: torch.device) -> Callable[[Tensor, Any], Tensor]:
    """deepinv's sampler `name` with `steps` steps, as a function (y01, physics) -> x01."""
    import numpy as np
    from deepinv.optim.data_fidelity import L2
    from deepinv.sampling import DDRM, DPS, DiffPIR

    if name == "dps":
        model = DPS(denoiser, num_steps=steps, device=device, rng=torch.Generator(device))
        return lambda y, physics: model(y, physics, seed=1)
    if name == "diffpir":
        model = DiffPIR(denoiser, data_fidelity=L2(), max_iter=steps, sigma=SIGMA_Y / 2, device=device)
        return lambda y, physics: model(y, physics, seed=1)
    if name == "ddrm":
        model = DDRM(denoiser, sigmas=np.linspace(1, 0, steps + 1)[:-1])  # no call at sigma 0
        return lambda y, physics: model(y, physics, seed=1)
    raise ValueError(f"no deepinv counterpart for {name!r}; use dps, diffpir or ddrm")


def deepinv_nfe(name: str, steps: int, size: int = 8) -> tuple[int, int]:
    """(forward calls, backward passes) of deepinv's sampler with `steps` steps, counted with a free stand-in."""
    import deepinv as dinv

    counter = _CountingStandIn()
    mask = torch.ones(1, 3, size, size)
    mask[..., ::2, :] = 0
    physics = dinv.physics.Inpainting(img_size=(3, size, size), mask=mask,
                                      noise_model=dinv.physics.GaussianNoise(sigma=0.01))
    y = physics(torch.rand(1, 3, size, size))
    deepinv_sampler(name, counter, steps, torch.device("cpu"))(y, physics)
    return counter.forward_calls, counter.backward_calls


def matching_steps(name: str, nfe_forward: int, max_steps: int = 200) -> int:
    """Smallest deepinv step count whose forward calls equal `nfe_forward` (ValueError if none)."""
    lo = max(2, nfe_forward - 3)
    for steps in range(lo, min(nfe_forward + 4, max_steps)):
        if deepinv_nfe(name, steps)[0] == nfe_forward:
            return steps
    raise ValueError(f"deepinv {name}: no step count gives exactly {nfe_forward} network calls")


def side_by_side(prior: DiffusionPrior, batch: int, size: int, device: torch.device,
                 log: Callable[[str], None], repeats: int = 3) -> tuple[list[dict[str, Any]], str]:
    """Rows (ours vs deepinv wall time at equal NFE) and a one-paragraph description of the setup.

    Runs are interleaved (network sample, ours, theirs, network sample) `repeats` times; times are best of
    the repeats. Both sides run with the network clock attached (benchmarks/clocks.py), so each row also
    splits the time into seconds inside the shared network and seconds outside it."""
    import deepinv


    timer = NetworkTimer(prior, batch, device)
    problem = inpainting_problem(batch, size, device)
    denoiser = deepinv_denoiser(prior)
    rows = []
    for name, steps in OUR_STEPS.items():
        solver = solvers.get(name, prior, task="inpaint_random", num_steps=steps)
        ours_calls = solver.budget()["nfe_forward"]
        try:
            theirs_steps = matching_steps(name, ours_calls)
        except ValueError as err:
            rows.append({"section": "deepinv", "solver": name, "task": "inpaint_random", "status": str(err)})
            continue
        run_theirs = deepinv_sampler(name, denoiser, theirs_steps, device)
        ours: list[tuple[float, float]] = []  # (wall, seconds inside the network) per repeat
        theirs: list[tuple[float, float]] = []
        timer.sample(1)
        for _ in range(repeats):  # interleaved: network, ours, theirs, network
            gens = [torch.Generator().manual_seed(100 + s) for s in problem["seeds"]]
            with NetworkClock(device).attached(prior) as net:
                t, _ = timed(lambda: solver.solve(problem["y"], problem["A"], gens), device)
            ours.append((t.wall, net.seconds))
            ours_nfe = (prior.nfe.forward // batch, prior.nfe.backward // batch)
            prior.reset_counters()
            with NetworkClock(device).attached(prior) as net:
                t, _ = timed(lambda: run_theirs(problem["y01"], problem["physics"]), device)
            theirs.append((t.wall, net.seconds))
            theirs_nfe = (prior.nfe.forward // batch, prior.nfe.backward // batch)
            prior.reset_counters()
            timer.sample(1)
        (ours_s, ours_net), (theirs_s, theirs_net) = min(ours), min(theirs)
        limit = network_limit(ours_nfe[0], ours_nfe[1], timer.t_fwd.wall, timer.t_vjp.wall)
        timer.fwd.clear(), timer.fb.clear()
        row = {"section": "deepinv", "solver": name, "task": "inpaint_random", "batch": batch, "status": "ok",
               "our_steps": steps, "deepinv_steps": theirs_steps,
               "nfe_ours": f"{ours_nfe[0]}/{ours_nfe[1]}", "nfe_deepinv": f"{theirs_nfe[0]}/{theirs_nfe[1]}",
               "ours_s": ours_s, "deepinv_s": theirs_s, "ratio": ours_s / theirs_s, "limit_s": limit,
               "ours_over_limit": ours_s / limit, "deepinv_over_limit": theirs_s / limit,
               "best_possible_ratio": limit / theirs_s, "ours_network_s": ours_net, "deepinv_network_s": theirs_net,
               "ours_outside_s": ours_s - ours_net, "deepinv_outside_s": theirs_s - theirs_net, "repeats": repeats}
        rows.append(row)
        log(f"deepinv {name}: ours {ours_s:.2f}s ({row['nfe_ours']}) vs deepinv {theirs_s:.2f}s "
            f"({row['nfe_deepinv']}): ratio {row['ratio']:.3f}; network limit {limit:.2f}s; outside the network "
            f"ours {row['ours_outside_s']:.2f}s, deepinv {row['deepinv_outside_s']:.2f}s")
    setup = (f"deepinv {deepinv.__version__}, samplers `deepinv.sampling.DPS` (defaults: VP schedule, DDPM solver, "
             "float64 state), `DiffPIR` (L2 data fidelity, its closed-form inpainting prox), `DDRM` (sigmas "
             "linspace(1, 0) without the final 0); our UNet wrapped by `benchmarks.deepinv_side_by_side.deepinv_denoiser` "
             f"(D01(x, s) = (D(2x - 1; 2s) + 1) / 2). Task inpaint_random, one 80 % mask shared by the batch of {batch}, "
             f"sigma_y {SIGMA_Y} on [-1, 1]. NFE are counted by our prior's counters for both sides; deepinv's "
             f"step count is the one whose counted calls equal ours. Times: best of {repeats} interleaved runs; `in network` "
             "is the time both sides spent inside the same network (forward calls and the backward passes through "
             "them, clocked by hooks during the run), `outside` the rest.")
    return rows, setup
