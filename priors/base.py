"""The `DiffusionPrior` interface: the only way a solver touches a diffusion model.

Two views of one model (design.md "Prior"):

* VP-DDPM view over the 1000 discrete steps: `model_output(x_k, k)` -> (eps_hat, v) where v is the
  learned-range variance interpolation value in [-1, 1] (guided-diffusion `learned_range`),
  `eps`, `x0` (Tweedie, optional clipping), `score`, `log_variance` (DDPM ancestral step, spec
  baselines §1.2) and `alphas_cumprod`.
* EDM view: `denoise(x, sigma)` = D(x; sigma) on the VE variable x = x0 + sigma n, with the
  continuous VP conversion of SPGD/DAPS (spec seed §1):
  D(x; sigma) = x - sigma * eps(x / sqrt(1 + sigma^2), kappa(sigma)).

k may be an int, a float (fractional index) or a tensor of shape (B,) (one per image).

Counting (design.md): every forward evaluation of the model counts one NFE per image of the batch,
and every backward (vector-Jacobian) pass through a model output counts one backward NFE per image.
Backward passes are counted by a hook on the output tensor, so a solver cannot forget to count.
Subclasses implement `_model(x_k, k)` only; exact priors (`ExactPrior`: Gaussian, Gaussian mixture)
implement `_denoise` instead, exact at any sigma, and derive `_model` from it by the schedule
identities; they count one forward per image per call, the same budget as a network, so tables show
the same NFE whichever prior runs. Counters: `prior.nfe` (`.forward`, `.backward`, `.as_dict()`),
reset by `reset_counters()` (Solver.solve does this at the start of every solve).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from operators.noise import randn_per_image
from priors.schedule import ContinuousVP, VPSchedule

Tensor = torch.Tensor


@dataclass
class NFECounter:
    """Per-image network evaluations since the last `reset()`."""

    forward: int = 0
    backward: int = 0

    def reset(self) -> None:
        self.forward = 0
        self.backward = 0

    def as_dict(self) -> dict[str, int]:
        return {"nfe_forward": self.forward, "nfe_backward": self.backward}


class DiffusionPrior(torch.nn.Module):
    """Base class of every prior. Subclasses implement `_model` (and optionally `_denoise`)."""

    #: registry name (e.g. "ffhq256", "gaussian")
    name: str = "prior"
    #: the range of the data: clipped x0 estimates (`x0_from_eps(clip=True)`) and solver outputs
    #: (`Solver.solve`) are clamped to it; None for unbounded data (the vector mixture of priors/gmm_vector.py)
    data_range: tuple[float, float] | None = (-1.0, 1.0)

    def __init__(self, image_shape: tuple[int, int, int], schedule: VPSchedule | None = None) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.schedule = schedule or VPSchedule()
        self.continuous = ContinuousVP()
        self.nfe = NFECounter()

    # ----------------------------------------------------------------- to implement
    def _model(self, x_k: Tensor, k: Tensor) -> tuple[Tensor, Tensor | None]:
        """Raw model at discrete/fractional index k (float tensor (B,)): (eps_hat, v or None)."""
        raise NotImplementedError

    def _denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """D(x; sigma) for sigma of shape (B,). Default: the VPPrecond conversion of `_model`."""
        c_in = (1.0 / torch.sqrt(1.0 + sigma.to(torch.float64) ** 2)).to(x.dtype)
        kappa = self.continuous.index(sigma).to(x.dtype)
        eps, _ = self._model(x * _bcast(c_in, x), kappa)
        return x - _bcast(sigma.to(x.dtype), x) * eps

    # ----------------------------------------------------------------- helpers
    @property
    def device(self) -> torch.device:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device("cpu")

    @property
    def alphas_cumprod(self) -> Tensor:
        return self.schedule.alphas_cumprod

    def reset_counters(self) -> None:
        self.nfe.reset()

    def _per_image(self, value: Tensor | float | int, x: Tensor) -> Tensor:
        """(B,) float64 on x's device. A Python number is filled in on the device (no host-device copy)."""
        if not isinstance(value, torch.Tensor):
            return x.new_full((x.shape[0],), float(value), dtype=torch.float64)
        t = value.to(device=x.device, dtype=torch.float64)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        elif t.ndim > 1 and t.numel() == x.shape[0]:  # (B, 1, 1, 1) as solvers often keep it
            t = t.reshape(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"time/sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
        return t

    def _count(self, out: Tensor, batch: int) -> Tensor:
        self.nfe.forward += batch
        if out.requires_grad:
            def _on_backward(grad: Tensor) -> Tensor:
                self.nfe.backward += batch
                return grad
            out.register_hook(_on_backward)
        return out

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{self.name} prior expects images of shape (B, {', '.join(map(str, self.image_shape))}), "
                f"got {tuple(x.shape)}; resize/crop the data to the prior's size")

    # ----------------------------------------------------------------- VP-DDPM view
    def model_output(self, x_k: Tensor, k: Tensor | float | int) -> tuple[Tensor, Tensor | None]:
        """(eps_hat, v): one counted evaluation. v is None for priors without learned variance."""
        self._check_input(x_k)
        kk = self._per_image(k, x_k)
        eps, v = self._model(x_k, kk.to(x_k.dtype) if kk.dtype != x_k.dtype else kk)
        eps = self._count(eps, x_k.shape[0])
        return eps, v

    def eps(self, x_k: Tensor, k: Tensor | float | int) -> Tensor:
        return self.model_output(x_k, k)[0]

    def x0_from_eps(self, x_k: Tensor, k: Tensor | float | int, eps: Tensor, clip: bool = False) -> Tensor:
        """Tweedie: x0 = (x_k - sqrt(1 - abar_k) eps) / sqrt(abar_k), optionally clipped to [-1, 1]."""
        ab = self.schedule.abar(self._per_image(k, x_k)).to(x_k.dtype)
        x0 = (x_k - _bcast(torch.sqrt(1 - ab), x_k) * eps) / _bcast(torch.sqrt(ab), x_k)
        return x0.clamp(*self.data_range) if clip and self.data_range is not None else x0

    def x0(self, x_k: Tensor, k: Tensor | float | int, clip: bool = False) -> Tensor:
        return self.x0_from_eps(x_k, k, self.eps(x_k, k), clip=clip)

    def score(self, x_k: Tensor, k: Tensor | float | int) -> Tensor:
        """grad log p_k(x_k) = -eps / sqrt(1 - abar_k)."""
        ab = self.schedule.abar(self._per_image(k, x_k)).to(x_k.dtype)
        return -self.eps(x_k, k) / _bcast(torch.sqrt(1 - ab), x_k)

    def log_variance(self, k: Tensor | float | int, v: Tensor | None, like: Tensor) -> Tensor:
        """Log variance of the ancestral step k -> k-1 (spec baselines §1.2, learned range).

        log s^2 = f log(beta_k) + (1 - f) log(beta_tilde_k), f = (v + 1) / 2, beta_tilde_0 := beta_tilde_1.
        Priors without learned variance (v is None) use the posterior variance beta_tilde_k
        ("fixed small"), the exact choice for a Gaussian posterior q(x_{k-1} | x_k, x0).
        """
        kk = self._per_image(k, like).round().long()
        sch = self.schedule
        betas = sch.table("betas", like.device)
        ab, ab_prev = sch.table("alphas_cumprod", like.device), sch.table("alphas_cumprod_prev", like.device)
        beta_tilde = betas * (1 - ab_prev) / (1 - ab)
        beta_tilde = torch.cat([beta_tilde[1:2], beta_tilde[1:]])
        l_min = _bcast(torch.log(beta_tilde[kk]).to(like.dtype), like)
        if v is None:
            return l_min.expand_as(like)
        l_max = _bcast(torch.log(betas[kk]).to(like.dtype), like)
        f = (v + 1) / 2
        return f * l_max + (1 - f) * l_min

    # ----------------------------------------------------------------- EDM view
    def denoise(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """D(x; sigma): posterior-mean estimate of x0 from x = x0 + sigma n (one counted evaluation)."""
        self._check_input(x)
        s = self._per_image(sigma, x)
        return self._count(self._denoise(x, s), x.shape[0])


class ExactPrior(DiffusionPrior):
    """A prior whose denoiser D(x; sigma) is known in closed form (Gaussian, Gaussian mixture).

    Subclasses implement the exact `_denoise(x, sigma)` (differentiable in x, per-image sigma).
    The VP-DDPM view follows from the schedule identities, so both views are exact and agree:
    x_k = sqrt(abar_k) (x0 + sigma_k n) with sigma_k^2 = (1 - abar_k) / abar_k, hence
    x0_hat = D(x_k / sqrt(abar_k); sigma_k) and eps_hat = (x_k - sqrt(abar_k) x0_hat) / sqrt(1 - abar_k).
    Fractional k uses `VPSchedule.abar` (log-linear interpolation). There is no learned variance
    (v = None: solvers use the "fixed small" posterior variance). Counting is the same as for a
    network: one forward per image per call, one backward per image per VJP through the output.
    """

    def _model(self, x_k: Tensor, k: Tensor) -> tuple[Tensor, Tensor | None]:
        ab = self.schedule.abar(k.to(torch.float64))
        sqrt_ab = _bcast(torch.sqrt(ab).to(x_k.dtype), x_k)
        sqrt_1m = _bcast(torch.sqrt(1 - ab).to(x_k.dtype), x_k)
        sigma = torch.sqrt((1 - ab) / ab)
        x0 = self._denoise(x_k / sqrt_ab, sigma)
        return (x_k - sqrt_ab * x0) / sqrt_1m, None

    def _denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        raise NotImplementedError


def randn(shape: tuple[int, ...], generator: torch.Generator | Sequence[torch.Generator] | None = None,
          dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """Standard normal noise of `shape` (B, ...); a list of B generators draws row i from generator i
    (so image i's draw never depends on the rest of the batch). Drawn on `device` when the generators
    live there, else on theirs and copied once (operators.noise.randn_per_image)."""
    return randn_per_image(torch.empty(shape, dtype=dtype, device=device), generator)


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1) on like's device."""
    return v.to(like.device).view(-1, *([1] * (like.ndim - 1)))
