"""Noise schedules shared by every prior and solver.

Discrete VP-DDPM schedule of all public ADM checkpoints (Ho et al. 2020; guided-diffusion
`get_named_beta_schedule("linear")`): beta_k = 1e-4 + k/999 (0.02 - 1e-4), k = 0..999,
abar_k = prod_{j<=k} (1 - beta_j).  VE view: sigma_k = sqrt((1 - abar_k) / abar_k).

Continuous VP conversion used by SPGD and DAPS (spec solvers-seed.md §1, `VPPrecond`):
beta(t) = beta_min + beta_d t, sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1),
t(sigma) = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d,
fractional DDPM index kappa(sigma) = (M - 1) t(sigma) with M = 1000.
Check values: kappa(100) = 956.1, kappa(0.1) = 26.97.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class VPSchedule:
    """The linear DDPM schedule, kept in float64 (cast at the point of use)."""

    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    betas: Tensor = field(init=False, repr=False)
    alphas_cumprod: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        betas = torch.linspace(self.beta_start, self.beta_end, self.num_steps, dtype=torch.float64)
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1.0 - betas, dim=0))
        object.__setattr__(self, "_tables", {})

    def table(self, name: str, device: torch.device | str) -> Tensor:
        """A float64 table of the schedule on `device`, copied there once and cached (no host-device copy
        in a step loop): "log_abar" (log abar_k for k = -1..num_steps-1, abar_{-1} = 1), "betas",
        "alphas_cumprod", "alphas_cumprod_prev"."""
        device = torch.device(device)
        key = (name, device)
        if key not in self._tables:
            if name == "log_abar":
                cpu = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(self.alphas_cumprod)])
            elif name in ("betas", "alphas_cumprod", "alphas_cumprod_prev"):
                cpu = getattr(self, name)
            else:
                raise ValueError(f"unknown schedule table {name!r}")
            self._tables[key] = cpu.to(device)
        return self._tables[key]

    @property
    def alphas_cumprod_prev(self) -> Tensor:
        """abar_{k-1} with abar_{-1} := 1."""
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    def abar(self, k: Tensor | float | int) -> Tensor:
        """abar at (possibly fractional, possibly per-image) index k, float64.

        Integer k reproduces the table (to float64 rounding); fractional k interpolates log(abar)
        linearly. k = -1 gives 1 (the clean end). The result lives on k's device (tables cached there).
        """
        k = torch.as_tensor(k, dtype=torch.float64)
        log_ab = self.table("log_abar", k.device)
        pos = (k + 1.0).clamp(0, self.num_steps)
        lo = pos.floor().long().clamp(max=self.num_steps - 1)
        frac = pos - lo
        hi = (lo + 1).clamp(max=self.num_steps)
        return torch.exp(log_ab[lo] * (1 - frac) + log_ab[hi] * frac)

    def sigma(self, k: Tensor | float | int) -> Tensor:
        """VE noise level sigma_k = sqrt((1 - abar_k) / abar_k)."""
        ab = self.abar(k)
        return torch.sqrt((1 - ab) / ab)

    def index_of_sigma(self, sigma: Tensor | float) -> Tensor:
        """Fractional discrete index k with sigma_k = sigma (inverse of `sigma`, log-linear in abar)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        target = -torch.log1p(sigma**2)
        log_ab = self.table("log_abar", sigma.device)
        # log_ab is decreasing in position; search on the negated array.
        neg = -log_ab
        pos_hi = torch.searchsorted(neg, -target).clamp(1, self.num_steps)
        pos_lo = pos_hi - 1
        frac = (log_ab[pos_lo] - target) / (log_ab[pos_lo] - log_ab[pos_hi])
        return pos_lo.to(torch.float64) + frac - 1.0


@dataclass(frozen=True)
class ContinuousVP:
    """The continuous VP-SDE view of the linear schedule (SPGD/DAPS `VPPrecond`)."""

    beta_min: float = 0.1
    beta_d: float = 19.9
    M: int = 1000

    def sigma(self, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.sqrt(torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t))

    def t(self, sigma: Tensor | float) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return (torch.sqrt(self.beta_min**2 + 2 * self.beta_d * torch.log1p(sigma**2)) - self.beta_min) / self.beta_d

    def index(self, sigma: Tensor | float) -> Tensor:
        """Fractional DDPM index kappa(sigma) = (M - 1) t(sigma) fed to the UNet (not rounded)."""
        return (self.M - 1) * self.t(sigma)

    def sigma_of_index(self, kappa: Tensor | float) -> Tensor:
        return self.sigma(torch.as_tensor(kappa, dtype=torch.float64) / (self.M - 1))


def edm_sigmas(num_steps: int, sigma_max: float = 100.0, sigma_min: float = 0.1, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) eq. 5 polynomial schedule, num_steps values from sigma_max to sigma_min (float64)."""
    i = torch.arange(num_steps, dtype=torch.float64)
    denom = max(num_steps - 1, 1)
    return (sigma_max ** (1 / rho) + i / denom * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho

