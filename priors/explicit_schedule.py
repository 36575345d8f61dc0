"""A VP schedule given by its betas (or its abar table), and its respacing onto a time grid.

`VPSchedule` (priors/schedule.py) is the linear 1e-4 -> 0.02 schedule of the image checkpoints.
`ExplicitSchedule` is the same object (same tables, same `abar(k)` with abar_{-1} = 1, fractional
indices interpolated log-linearly) for any betas, e.g. the *decreasing* betas linspace(0.02, 1e-4, 999)
of the MCGdiff Gaussian-mixture benchmark (spec gmm-benchmark.md §1): with abar_{-1} = 1 our index
k = t - 1 for the spec's t = 0..999 (spec abar_0 = 1 is our abar_{-1}).

`respaced(indices)` keeps only the abar of the given (increasing) indices: the new schedule has one entry
per index, so a solver that steps through every index of the new schedule (`num_steps` = its length)
visits exactly that grid, then ends at k = -1 (abar = 1). This is guided-diffusion's respacing; for an
exact prior (denoiser known at every noise level) it changes nothing but the indexing, which is how the
benchmark's "adapted" time grids reach solvers that only know evenly spaced grids, without changing them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from priors.schedule import VPSchedule

Tensor = torch.Tensor


@dataclass(frozen=True, eq=False)
class ExplicitSchedule(VPSchedule):
    """A VP schedule with the given betas (each in (0, 1)); num_steps = len(betas)."""

    given_betas: tuple[float, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        betas = torch.tensor(self.given_betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() < 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("ExplicitSchedule needs a non-empty sequence of betas, each in (0, 1)")
        object.__setattr__(self, "num_steps", int(betas.numel()))
        object.__setattr__(self, "beta_start", float(betas[0]))
        object.__setattr__(self, "beta_end", float(betas[-1]))
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1.0 - betas, dim=0))
        object.__setattr__(self, "_tables", {})

    @classmethod
    def from_betas(cls, betas: Sequence[float] | Tensor) -> "ExplicitSchedule":
        return cls(given_betas=tuple(float(b) for b in torch.as_tensor(betas, dtype=torch.float64).tolist()))

    @classmethod
    def from_alphas_cumprod(cls, abar: Sequence[float] | Tensor) -> "ExplicitSchedule":
        """The schedule whose abar_k (k = 0, 1, ...) is `abar` (strictly decreasing, in (0, 1))."""
        ab = torch.as_tensor(abar, dtype=torch.float64).reshape(-1)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        return cls.from_betas(1.0 - ab / prev)

    def respaced(self, indices: Sequence[int]) -> "ExplicitSchedule":
        """The schedule of abar at `indices` (strictly increasing indices of this schedule, >= 0)."""
        idx = [int(i) for i in indices]
        if not idx or idx[0] < 0 or idx[-1] >= self.num_steps or any(b <= a for a, b in zip(idx, idx[1:])):
            raise ValueError(f"respaced needs strictly increasing indices in [0, {self.num_steps - 1}], got {idx}")
        return ExplicitSchedule.from_alphas_cumprod(self.alphas_cumprod[idx])


def mcgdiff_gmm_schedule() -> ExplicitSchedule:
    """Spec gmm-benchmark.md §1: betas = linspace(0.02, 1e-4, 999) (decreasing), abar_{-1} = 1."""
    return ExplicitSchedule.from_betas(torch.linspace(0.02, 1e-4, 999, dtype=torch.float64))


def adapted_timesteps(schedule: VPSchedule, n_steps: int, threshold: float = 0.01,
                      reserved: int = 1) -> list[int]:
    """The MCGdiff "adapted" time grid in the spec's t-indexing (t = k + 1, t = 0 is abar = 1), §1:

    1. start from [0]; 2. end = first t with sqrt(abar_t) < threshold; 3. keep t = 1 .. end-1 whenever
    sqrt(abar) has dropped by at least (sqrt(abar_0) - sqrt(abar_end)) / (n_steps - 1 - reserved) since the
    last kept t; 4. complete with ceil(linspace(last kept, T, n_steps - len + 1)) without its first point
    (T = num_steps, the last t). `reserved` = 1: the code reserves one slot for its single "optimal" index,
    which (spec §1) has no visible effect on the grid; we keep the slot and add no index, and this
    reproduces the spec's listed 20- and 100-step grids exactly (tests/test_posterior_gmm.py).
    """
    sq = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alphas_cumprod]).sqrt()
    T = schedule.num_steps
    below = torch.nonzero(sq < threshold).flatten()
    if below.numel() == 0:
        raise ValueError(f"sqrt(abar) never drops below {threshold}; the adapted grid needs a noisier schedule")
    end = int(below[0])
    delta = float(sq[0] - sq[end]) / (n_steps - 1 - reserved)
    kept = [0]
    for t in range(1, end):
        if float(sq[kept[-1]] - sq[t]) >= delta:
            kept.append(t)
    if len(kept) >= n_steps:
        raise ValueError(f"n_steps={n_steps} is too small for this schedule's adapted grid")
    tail = torch.ceil(torch.linspace(kept[-1], T, n_steps - len(kept) + 1, dtype=torch.float64)).long().tolist()
    return kept + tail[1:]
