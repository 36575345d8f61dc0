"""DCDP: Decoupled Data Consistency with Diffusion Purification (Li et al., arXiv 2403.06054).

Spec: /work/shared/spec/solvers-seed.md §5 (code `[DCDP] dcdp.py`, paper §3, App. A).

Purification times (`Purification_Schedule`, linear): with K rounds from T0 to T_end,
    t_i = flip(round(linspace(0, 1, K) (T0 - T_end) + 1e-6) + T_end),  zeros replaced by 1
(1-based DDPM indices; K = 10, 400 -> 0: 400, 356, 311, 267, 222, 178, 133, 89, 44, 1).

x = 0; for i = 1 .. K:
  1. data consistency (no network): tau steps of SGD with momentum 0.9 (buffer reset every round,
     PyTorch convention b <- 0.9 b + g, x <- x - lr b) on L(x) = mean((y - A(x))^2), the mean over
     the measurement entries of each image (PyTorch MSE "mean"; per image here).
  2. purification at index k = t_i - 1: x_k = sqrt(abar_k) x + sqrt(1 - abar_k) eps, then
     * version 1: deterministic DDIM (eta = 0) from k to 0 over S_i = min(ddim_steps, t_i) indices
       round(linspace(0, k, S_i)) of the 1000-step schedule, x0_hat clipped to [-1, 1] at every
       step and eps_hat recomputed from the clipped x0_hat; the last step returns x0_hat.
       (t_i = 1: noise at index 0, DDIM over indices {0, 1}, S = 2, as in the code.)
     * version 2: one Tweedie step, x = clip(x0_hat(x_k, k), -1, 1).
Output: x after the last purification. (The code purifies under CUDA fp16 autocast; we stay in float32.)

Learning rates are the code's values for its MSE-mean loss on 256x256 images: the effective step on
1/2 ||y - A x||^2 is 2 lr / m (m = entries of y per image), so images of H x W need lr x H W / 256^2
for the same step (set per dataset in YAML; the tests do it).

Noise: DCDP never reads A.sigma_y. The task values are the code's noiseless ones (t_end 0); for noisy
y the paper (App. A.3) prescribes a smaller lr and a schedule ending at T_K > 0 (numbers lost; the
code's sigma_y = 0.05 configs end at 50 / 20); set `t_end` / `lr` accordingly (the exact-prior tests
use t_end 50 and lr / 10 for deblurring).

Budget per image: version 1: sum_i max(min(ddim_steps, t_i), 2) forward; version 2: K forward;
0 backward (data consistency differentiates only the operator).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from operators.base import Operator
from solvers.base import RNG, Solver, SolverError

Tensor = torch.Tensor


def purification_times(rounds: int, t_start: int, t_end: int) -> list[int]:
    """DCDP linear purification schedule t_1 > ... > t_K (1-based indices, >= 1)."""
    if rounds < 1 or not 0 <= t_end <= t_start:
        raise SolverError(f"dcdp: need rounds >= 1 and 0 <= t_end <= t_start, got {rounds}, {t_start}, {t_end}")
    lin = torch.linspace(0, 1, rounds, dtype=torch.float64)
    t = torch.round(lin * (t_start - t_end) + 1e-6) + t_end
    return [max(int(v), 1) for v in t.flip(0).tolist()]


def ddim_indices(t: int, ddim_steps: int) -> list[int]:
    """Descending DDIM indices from t - 1 to 0 (code: S = min(ddim_steps, t); t = 1 uses {1, 0})."""
    steps = max(min(ddim_steps, t), 2)
    idx = torch.round(torch.linspace(0, max(t - 1, 1), steps, dtype=torch.float64)).long()
    return idx.flip(0).tolist()


class DCDP(Solver):
    name = "dcdp"
    smoke: ClassVar[dict[str, Any]] = {"rounds": 3, "dc_steps": 5, "ddim_steps": 3}

    # ------------------------------------------------------------------ budget
    def budget(self) -> dict[str, int]:
        times = purification_times(int(self.rounds), int(self.t_start), int(self.t_end))
        if int(self.version) == 2:
            nfe = len(times)
        else:
            nfe = sum(len(ddim_indices(t, int(self.ddim_steps))) for t in times)
        return {"nfe_forward": nfe, "nfe_backward": 0}

    # ------------------------------------------------------------------ steps
    def _data_consistency(self, x: Tensor, y: Tensor, A: Operator) -> Tensor:
        """tau SGD steps (momentum 0.9, buffer reset) on the per-image mean squared residual."""
        lr, beta = float(self.lr), float(self.momentum)
        buf = None
        for _ in range(int(self.dc_steps)):
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                loss = (y - A(xg)).pow(2).flatten(1).mean(1).sum()
                (g,) = torch.autograd.grad(loss, xg)
            buf = g if buf is None else beta * buf + g
            x = x.detach() - lr * buf
        self.check_finite(x, f"dcdp data consistency; decrease lr (now {self.lr})")
        return x

    def _abar(self, k: int) -> float:
        return float(self.prior.schedule.abar(k))

    def _tweedie(self, x_k: Tensor, k: int) -> Tensor:
        """Clipped x0_hat at index k (one NFE)."""
        return self.prior.x0(x_k, k, clip=True)

    def _ddim(self, x_k: Tensor, indices: list[int]) -> Tensor:
        """Deterministic DDIM (eta = 0) along descending `indices`; returns x0_hat at the last one."""
        for a, b in zip(indices, indices[1:] + [None]):
            x0 = self._tweedie(x_k, a)
            if b is None:
                return x0
            ab_a, ab_b = self._abar(a), self._abar(b)
            eps = (x_k - math.sqrt(ab_a) * x0) / math.sqrt(1 - ab_a)  # recomputed from the clipped x0
            x_k = math.sqrt(ab_b) * x0 + math.sqrt(1 - ab_b) * eps
        raise AssertionError("empty DDIM index list")

    def _purify(self, x: Tensor, t: int, rng: RNG) -> Tensor:
        k = t - 1
        ab = self._abar(k)
        x_k = math.sqrt(ab) * x + math.sqrt(1 - ab) * rng.randn_like(x)
        if int(self.version) == 2:
            return self._tweedie(x_k, k)
        return self._ddim(x_k, ddim_indices(t, int(self.ddim_steps)))

    # ------------------------------------------------------------------ algorithm
    def _solve(self, y: Tensor, A: Operator, rng: RNG) -> Tensor:
        if int(self.version) not in (1, 2):
            raise SolverError(f"dcdp: version must be 1 (DDIM purification) or 2 (Tweedie), got {self.version!r}")
        x = y.new_zeros((y.shape[0], *self.prior.image_shape))
        for t in purification_times(int(self.rounds), int(self.t_start), int(self.t_end)):
            x = self._data_consistency(x, y, A)
            with torch.no_grad():
                x = self._purify(x, t, rng)
            self.check_finite(x, f"dcdp purification at t={t}")
        return x
