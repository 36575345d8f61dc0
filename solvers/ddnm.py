"""DDNM / DDNM+ — Denoising Diffusion Null-space Model (Wang, Yu, Zhang; ICLR 2023), SVD path.

Source: spec solvers-more.md §1 (= `[DDNM]` wyhuai/DDNM `functions/svd_ddnm.py`, `functions/svd_operators.py`,
`guided_diffusion/diffusion.py`, `main.py`). Notation: abar_{-1} = 1, a = sqrt(abar_s), sigma_t = sqrt(1 - abar_s)
for a step k -> s; eps = eps_theta(x_k, k), x0 = Tweedie(x_k, eps) NOT clipped.

Time grid (§1.1): T = num_steps, skip = 1000 // T, grid g = T-1, ..., 0 -> DDPM index k = g * skip (990, 980,
..., 0 for T = 100), then s = -1. Start x ~ N(0, I). Output: the state after the last step (s = -1).

DDNM (noise-free y, A.sigma_y == 0; §1.2), one network call per step:
    x0~ = x0 - A^+(A x0 - y)                             (range-null-space correction, A.pinv / A.forward)
    x_s = a x0~ + eta sigma_t z + sqrt(1 - eta^2) sigma_t eps      (the code's DDIM-type step, eta = 0.85)

DDNM+ (noisy y, A.sigma_y > 0; §1.3), in spectral coordinates of A = U diag(s_i) V^T (`A.svd`), x_bar = V^T x,
y_bar = U^T y, z_bar ~ N(0, I):
    x0~_bar_i = x0_bar_i - lambda_i (x0_bar_i - y_bar_i / s_i)    (no correction where s_i = 0)
    x_s      = V [a x0~_bar + d1 z_bar + d2 eps_bar]
per component (sigma_y = A.sigma_y, in [-1, 1] units = DDNM's internal unit: the official CLI value is half of it):
    s_i = 0 (null space)              lambda = 1 (unused),                       d1 = eta sigma_t, d2 = sqrt(1-eta^2) sigma_t
    s_i sigma_t > a sigma_y (noisier) lambda = 1,                                d1 = sqrt(sigma_t^2 - a^2 sigma_y^2 / s_i^2), d2 = 0
    s_i sigma_t < a sigma_y           lambda = s_i sigma_t sqrt(1-eta^2) / (a sigma_y), d1 = eta sigma_t, d2 = 0
    tie                               lambda = 1,                                d1 = eta sigma_t, d2 = sqrt(1-eta^2) sigma_t
At s = -1 (sigma_t = 0) every range component has lambda = 0: DDNM+ returns the uncorrected x0 there, DDNM the
corrected one (§1.3 item 5; both as the official code).

Time travel (§1.5; RePaint's jump schedule, official default off): options travel_length l, travel_interval
(None = l, the official code, whose jump points are every l grid steps), travel_repeat r. Jump points
J = {0, s, 2s, ...} below T - l; on arriving at g in J (r - 1 times) the walk goes back up l grid steps, each
up-step re-noising the last UNCORRECTED network x0: x_k' = sqrt(abar_k') x0 + sqrt(1 - abar_k') z (§1.5, as the
code), then walks down again. Budget = the number of down-steps (T + l (r - 1) |J| forward NFE), 0 backward.

Variants (`variant`). Default "paper": the intended DDNM+ rule above with one SVD for everything (the singular
values that A^+ treats as zero are null space in the noise rule too) and V^T applied to eps. "released"
reproduces the defects of the official SVD classes (spec §1.3 "code defects", §1.9 item 4) where they change the
result. By row (Table 1 tasks):

    task              sigma_y = 0     sigma_y > 0, variant "released"
    inpaint_random    same            same (official `Inpainting` applies V^T correctly)
    inpaint_box       same            same
    deblur_gaussian   same            the noise rule uses the UN-thresholded singular values (`Deblurring` uses
                                      `_singulars_orig` in Lambda / Lambda_noise but thresholded ones in A_pinv),
                                      and eps enters as V [d2 (P eps)] with P the singular-value permutation of
                                      the pixel grid but no V^T (`Lambda_noise` skips V_small^T)
    sr4 (bicubic)     same            unsupported: the official `SRConv` has no Lambda / Lambda_noise
                                      (NotImplementedError, [DDNM-#82])
    deblur_motion     unsupported (no SVD, as DDRM; spec §1.6)

Both variants keep the code's DDIM-type step (eta sqrt(1 - abar_s) instead of DDPM, §1.9 items 1-2) and the
sqrt(1 - eta^2) factor in lambda: these are the official sampler, not defects. The official block-average
`SuperResolution` class (not our bicubic sr4) has the same missing V^T; no Table 1 task uses it.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from operators.base import Operator
from operators.separable import svd_1d
from solvers import ddpm_steps as dd
from solvers.base import RNG, Solver, SolverError

Tensor = torch.Tensor

VARIANTS = ("paper", "released")
#: tasks whose official SVD class has no DDNM+ noise rule (variant "released" refuses them when sigma_y > 0)
RELEASED_NO_NOISE_RULE = frozenset({"sr4"})
#: tasks whose official class uses un-thresholded singular values and no V^T on eps in the noise rule
RELEASED_UNTHRESHOLDED = frozenset({"deblur_gaussian"})


def jump_schedule(num_steps: int, travel_length: int = 1, travel_repeat: int = 1,
                  travel_interval: int | None = None) -> list[int]:
    """Grid indices visited, T-1 ... 0 with the time-travel jumps, ending at -1 (spec §1.5, RePaint's rule)."""
    T, l, r = int(num_steps), int(travel_length), int(travel_repeat)
    s = l if travel_interval is None else int(travel_interval)
    if T < 1 or l < 1 or r < 1 or s < 1:
        raise SolverError(f"ddnm: num_steps, travel_length, travel_repeat and travel_interval must be >= 1, "
                          f"got {T}, {l}, {r}, {s}")
    jumps = {j: r - 1 for j in range(0, T - l, s)}
    g, out = T, []
    while g >= 1:
        g -= 1
        out.append(g)
        if jumps.get(g, 0) > 0:
            jumps[g] -= 1
            for _ in range(l):
                g += 1
                out.append(g)
    return out + [-1]


def ddnm_pairs(num_steps: int, travel_length: int = 1, travel_repeat: int = 1,
               travel_interval: int | None = None, num_train_steps: int = 1000) -> list[tuple[int, int]]:
    """(k, k_next) DDPM index pairs of the walk: k_next < k is a down-step (one network call), k_next > k an
    up-step (time travel); k_next = -1 is the end."""
    if int(num_steps) > num_train_steps:
        raise SolverError(f"ddnm: num_steps must be <= {num_train_steps}, got {num_steps}")
    skip = num_train_steps // int(num_steps)
    ks = [g * skip if g >= 0 else -1 for g in jump_schedule(num_steps, travel_length, travel_repeat, travel_interval)]
    return list(zip(ks[:-1], ks[1:]))


def ddnm_plus_rule(s: Tensor, a: float, sigma_t: float, sigma_y: float, eta: float) -> tuple[Tensor, Tensor, Tensor]:
    """(lambda, d1, d2) per spectral component (module docstring table; spec §1.3), shaped like s."""
    scaled, level = s * sigma_t, a * sigma_y
    range_space = s > 0
    less_noisy = range_space & (scaled < level)
    noisier = range_space & (scaled > level)
    s_safe = torch.where(range_space, s, torch.ones_like(s))
    one = torch.ones_like(s)
    lam = torch.where(less_noisy, scaled * math.sqrt(1 - eta**2) / level if level > 0 else one, one)
    d1_noisier = torch.sqrt((sigma_t**2 - level**2 / s_safe**2).clamp_min(0))
    d1 = torch.where(noisier, d1_noisier, torch.full_like(s, eta * sigma_t))
    d2 = torch.where(less_noisy | noisier, torch.zeros_like(s), torch.full_like(s, math.sqrt(1 - eta**2) * sigma_t))
    return lam, d1, d2


def unthresholded_singulars(A: Operator) -> Tensor:
    """(1, n) float64: the 2-D singular values of a separable operator BEFORE the 1-D threshold, in the spectral
    order of `A.svd` (the official `Deblurring._singulars_orig`; variant "released")."""
    svd = A.svd
    _, s_rows, _ = svd_1d(A.rows)
    _, s_cols, _ = svd_1d(A.cols)
    grid = torch.zeros(svd.h, svd.w, dtype=torch.float64)
    grid[: s_rows.numel(), : s_cols.numel()] = torch.outer(s_rows, s_cols)
    flat = grid.reshape(1, -1).expand(svd.channels, -1).reshape(-1)  # (C, H, W)-flat
    return flat[svd.index_v][None]


class DDNM(Solver):
    """DDNM (noise-free y) / DDNM+ (noisy y) on the SVD path, with optional time travel (module docstring)."""

    name = "ddnm"
    smoke: ClassVar[dict[str, Any]] = {"num_steps": 10}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.variant not in VARIANTS:
            raise SolverError(f"ddnm: variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        self.budget()  # validates num_steps and the time-travel options (one-line SolverError)

    def supports(self, A: Operator) -> bool:
        if not (super().supports(A) and A.is_linear and A.has_svd):
            return False
        return not (self.variant == "released" and A.sigma_y > 0 and A.name in RELEASED_NO_NOISE_RULE)

    def budget(self) -> dict[str, int]:
        pairs = ddnm_pairs(self.num_steps, self.travel_length, self.travel_repeat, self.travel_interval)
        return {"nfe_forward": sum(1 for k, k_next in pairs if k_next < k), "nfe_backward": 0}

    def _solve(self, y: Tensor, A: Operator, rng: RNG) -> Tensor:
        sch = self.prior.schedule
        pairs = ddnm_pairs(self.num_steps, self.travel_length, self.travel_repeat, self.travel_interval,
                           sch.num_steps)
        abar = {k: (float(sch.abar(k)) if k >= 0 else 1.0) for pair in pairs for k in pair}
        eta = float(self.eta)
        step = self._plus_step(y, A) if A.sigma_y > 0 else self._noise_free_step(y, A)
        x = dd.start_noise(self.prior, y, rng)
        x0_last = x
        for k, k_next in pairs:
            a_next = abar[k_next]
            if k_next > k:  # time travel: re-noise the last uncorrected x0 to index k_next (§1.5)
                x = math.sqrt(a_next) * x0_last + math.sqrt(1 - a_next) * rng.randn_like(x0_last)
                continue
            eps = self.prior.eps(x, k)
            x0_last = self.prior.x0_from_eps(x, k, eps)  # unclipped (§1.1)
            x = step(x0_last, eps, math.sqrt(a_next), math.sqrt(1 - a_next), eta, rng)
            self.check_finite(x, f"ddnm step k={k}")
        return x

    # ---------------------------------------------------------------- the two step rules
    def _noise_free_step(self, y: Tensor, A: Operator):
        """DDNM (§1.2): x_s = a (x0 - A^+(A x0 - y)) + eta sigma_t z + sqrt(1 - eta^2) sigma_t eps."""
        def step(x0: Tensor, eps: Tensor, a: float, sigma_t: float, eta: float, rng: RNG) -> Tensor:
            corrected = x0 - A.pinv(A(x0) - y)
            if sigma_t == 0:
                return a * corrected
            return a * corrected + eta * sigma_t * rng.randn_like(x0) + math.sqrt(1 - eta**2) * sigma_t * eps
        return step

    def _plus_step(self, y: Tensor, A: Operator):
        """DDNM+ (§1.3) in spectral coordinates; `variant: released` rows per the module docstring."""
        svd = A.svd
        s = svd.singulars(y.shape[0]).to(dtype=y.dtype, device=y.device)  # (B, n), thresholded, zeros past rank
        n = s.shape[1]
        y_bar = torch.nn.functional.pad(svd.Ut(y), (0, n - svd.m))
        observed = s > 0
        y_over_s = torch.where(observed, y_bar / torch.where(observed, s, torch.ones_like(s)), torch.zeros_like(s))
        released = self.variant == "released" and A.name in RELEASED_UNTHRESHOLDED
        s_rule = unthresholded_singulars(A).to(dtype=y.dtype, device=y.device).expand_as(s) if released else s
        index = svd.index_v.to(y.device) if released else None
        sigma_y = float(A.sigma_y)

        def step(x0: Tensor, eps: Tensor, a: float, sigma_t: float, eta: float, rng: RNG) -> Tensor:
            lam, d1, d2 = ddnm_plus_rule(s_rule, a, sigma_t, sigma_y, eta)
            x0_bar = svd.Vt(x0)
            corrected = x0_bar - lam * torch.where(observed, x0_bar - y_over_s, torch.zeros_like(x0_bar))
            # released deblur: eps permuted like the singular values but never transformed by V^T
            eps_bar = eps.reshape(eps.shape[0], -1).index_select(1, index) if released else svd.Vt(eps)
            noise = d1 * rng.randn((n,), like=s) if sigma_t > 0 else 0.0
            return svd.V(a * corrected + noise + d2 * eps_bar)
        return step
