"""SPGD's gradient management as one shared mechanism: likelihood warm-up + adaptive directional momentum.

SPGD (Wu et al., ACM MM 2025; spec solvers-seed.md §2.5-§2.6) splits each outer step of a guided sampler into
a *warm-up* of N likelihood-gradient steps at a fixed noise level (paper §4.1, Eq. 10) followed by the
solver's own denoising step, and smooths the likelihood gradient within the warm-up by *ADM* (paper §4.2,
Eq. 12-13). The authors present both as a gradient-management technique integrated "into the reverse diffusion
step" of existing posterior samplers (paper §1 and §4; Table 2 adds them one by one to a DPS-style baseline
step) and their README lists "Plug-and-Play Compatibility: easily integrated into existing diffusion posterior
sampling frameworks" (shared/papers/spgd-readme.md). Here it is one loop used by SPGD (solvers/spgd.py), DPS
and DPPS (solvers/dps.py, solvers/dpps.py: options `warmup_steps`, `adm`) and DAPS's Langevin likelihood step
(solvers/daps.py: option `adm`):

    u_0 = x
    for j = 0 .. N-1:
        g_j, aux_j = evaluate(u_j)                  (the solver's likelihood gradient at u_j; aux: its network output)
        m_j = g_j                                   (adm off)
        m_j = g_j if j = 0 else a_j beta m_{j-1} + (1 - a_j beta) g_j,  a_j = (1 + cos(g_j, m_{j-1})) / 2   (adm on)
        u_{j+1} = u_j - lr m_j (+ drift(u_j, j))   (drift: DAPS's prior pull and Langevin noise; none elsewhere)

and returns u_N together with u_{N-1}, m_{N-1} and aux_{N-1}: each solver then makes its own denoising step
from them (SPGD: u_N + (1 - sigma'/sigma)(D(u_{N-1}) - u_{N-1}); DPS: mean(u_{N-1}) - zeta m_{N-1} + noise,
which for N = 1 without ADM is exactly the DPS step). Momentum restarts at every outer step (m_0 = g_0), as in
SPGD. With N = 1 and ADM off the loop is a single plain gradient step, so a solver with the options off
computes what it computed before (tests/test_gradient_management.py checks DPS bit for bit).

Diagnostics: every inner step reports `solver.observe("likelihood_step", step, inner, <noise level>, x=u_j,
grad=g_j, managed=m_j, lr, prior_direction)` (solvers/base.py convention); `prior_direction(u_j, aux_j)` is
called only when an observer is attached, so the NFE and the outputs never change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from solvers.base import Solver, SolverError

Tensor = torch.Tensor

COSINES = ("global", "channel")


def adm_cosine(g: Tensor, m: Tensor, kind: str) -> Tensor:
    """Per-image cosine between g and m, shape (B,).

    `global`: cosine of the flattened images (paper wording, Eq. 13). `channel`: cosine across the channel
    axis at each pixel (eps 1e-8), averaged over the pixels (the released SPGD code)."""
    if kind == "global":
        return torch.nn.functional.cosine_similarity(g.flatten(1), m.flatten(1), dim=1, eps=1e-8)
    if kind == "channel":
        return torch.nn.functional.cosine_similarity(g, m, dim=1, eps=1e-8).flatten(1).mean(1)
    raise SolverError(f"ADM cosine must be 'global' or 'channel', got {kind!r}")


def adm_update(m: Tensor | None, g: Tensor, beta: float, kind: str) -> Tensor:
    """Adaptive directional momentum (SPGD paper Eq. 12-13): m_0 = g_0,
    m_j = a beta m_{j-1} + (1 - a beta) g_j with a = (1 + cos(g_j, m_{j-1})) / 2 (per image)."""
    if m is None:
        return g
    a = ((1 + adm_cosine(g, m, kind)) / 2).view(-1, *([1] * (g.ndim - 1)))
    return a * beta * m + (1 - a * beta) * g


@dataclass(frozen=True)
class GradientManagement:
    """The warm-up length and the ADM setting of one solver (N = 1 and adm off: a plain gradient step)."""

    warmup_steps: int = 1
    adm: bool = False
    beta: float = 0.95
    cosine: str = "global"

    def __post_init__(self) -> None:
        if int(self.warmup_steps) < 1:
            raise SolverError(f"warmup_steps must be >= 1 (1 = no warm-up), got {self.warmup_steps}")
        if self.cosine not in COSINES:
            raise SolverError(f"the ADM cosine (adm_cosine; SPGD: cosine) must be one of {', '.join(COSINES)}, "
                              f"got {self.cosine!r}")
        if not 0 <= float(self.beta) <= 1:
            raise SolverError(f"the ADM momentum (adm_beta; SPGD: beta) must be in [0, 1], got {self.beta}")

    @property
    def off(self) -> bool:
        """True when the mechanism reduces to the solver's plain likelihood step."""
        return int(self.warmup_steps) == 1 and not self.adm

    def momentum(self, m: Tensor | None, g: Tensor) -> Tensor:
        """m_j from m_{j-1} and g_j: ADM when on, else g_j itself (the same tensor)."""
        return adm_update(m, g, float(self.beta), self.cosine) if self.adm else g

    @classmethod
    def from_params(cls, params: Mapping[str, Any], warmup_key: str | None = "warmup_steps") -> "GradientManagement":
        """From a solver's hyper-parameters `warmup_steps`, `adm`, `adm_beta`, `adm_cosine` (warmup_key None:
        the solver's own inner loop sets the length, e.g. DAPS's Langevin steps)."""
        return cls(warmup_steps=int(params[warmup_key]) if warmup_key else 1, adm=bool(params["adm"]),
                   beta=float(params["adm_beta"]), cosine=str(params["adm_cosine"]))


@dataclass
class Warmup:
    """What the loop leaves: u_N, u_{N-1} (the last point a gradient was taken at), m_{N-1}, aux_{N-1}."""

    u: Tensor
    u_prev: Tensor
    managed: Tensor
    aux: Any


Evaluate = Callable[[Tensor], "tuple[Tensor, Any]"]


def warmup(solver: Solver | None, u: Tensor, evaluate: Evaluate, lr: float | Tensor, steps: int,
           management: GradientManagement, *, step: int = 0, noise: Mapping[str, Any] | None = None,
           drift: Callable[[Tensor, int], Tensor] | None = None,
           check: Callable[[Tensor, int], None] | None = None,
           prior_direction: Callable[[Tensor, Any], Tensor] | None = None) -> Warmup:
    """Run `steps` managed likelihood steps from u (see the module docstring); the one loop of SPGD, DPS(+),
    DPPS(+) and DAPS.

    evaluate(u) -> (g, aux): the likelihood gradient at u (descent is -g) and whatever the solver needs from
    the same network evaluation. drift(u_j, j): added to u_{j+1} (DAPS: prior pull + Langevin noise).
    check(u_{j+1}, j): the solver's divergence check. prior_direction(u_j, aux_j): the denoising direction
    reported to observers (evaluated only when one is attached). `step` and `noise` ({"sigma": ...} or
    {"k": ...}) are passed to the observers; solver None: nothing is observed.
    """
    observed = solver is not None and solver.observed
    m: Tensor | None = None
    u_prev, aux = u, None
    for j in range(int(steps)):
        g, aux = evaluate(u)
        m = management.momentum(m, g)
        if observed:
            solver.observe("likelihood_step", step=step, inner=j, **(noise or {}), x=u, grad=g, managed=m, lr=lr,
                           prior_direction=prior_direction(u, aux) if prior_direction is not None else None)
        u_prev, u = u, u - lr * m
        if drift is not None:
            u = u + drift(u_prev, j)
        if check is not None:
            check(u, j)
    if m is None:
        raise SolverError("the likelihood loop needs at least one step")
    return Warmup(u=u, u_prev=u_prev, managed=m, aux=aux)
