"""Batched conjugate gradients, per image (no coupling between the images of a batch).

Used for the data-consistency solves that have no closed form: the exact prox of the
reflect-padded blurs, PnP-ADMM's x-update (spec solvers-baselines.md §7.3, scico: CG), and the
generic `LinearOperator.prox`. Every image has its own step sizes and its own stopping test; on an
accelerator the loop runs its iteration budget without reading anything back (`check_every`).
"""
from __future__ import annotations

from typing import Callable

import torch

Tensor = torch.Tensor


def batch_dot(a: Tensor, b: Tensor) -> Tensor:
    """<a_i, b_i> for every image i of a batch: (B, ...) x (B, ...) -> (B,)."""
    return (a * b).flatten(1).sum(1)


def expand_per_image(value: float | Tensor, like: Tensor) -> Tensor:
    """A scalar or per-image (B,) value shaped (B, 1, 1, ...) to broadcast against `like`.

    A Python number becomes a 0-dim tensor filled on like's device (no host-device copy)."""
    if not isinstance(value, torch.Tensor):
        return like.new_full((), float(value))
    v = value.to(dtype=like.dtype, device=like.device)
    if v.ndim == 0:
        return v
    if v.ndim != 1 or v.shape[0] not in (1, like.shape[0]):
        raise ValueError(f"expected a scalar or one value per image ({like.shape[0]}), got shape {tuple(v.shape)}")
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor | None = None,
                       tol: float = 1e-6, max_iter: int = 200, check_every: int | None = None) -> Tensor:
    """Solve apply(x) = b for a symmetric positive definite `apply`, independently per image.

    Stops an image when ||b - apply(x)|| <= tol ||b|| (relative residual) or after max_iter steps: a
    converged image's update is masked to exactly zero, so its result is the same whether or not the
    loop goes on. Whether every image has converged is read back to the host every `check_every`
    iterations (0: never, a fixed budget of max_iter iterations). Default: every iteration on the CPU
    (a read costs nothing there), never on an accelerator (a read is a device sync; the masked
    iterations are cheap next to a network call). The result does not depend on `check_every`.
    """
    if check_every is None:
        check_every = 1 if b.device.type == "cpu" else 0
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply(x) if x0 is not None else b.clone()
    p = r.clone()
    rs = batch_dot(r, r)
    target = (tol ** 2) * batch_dot(b, b)
    shape = (-1,) + (1,) * (b.ndim - 1)
    for i in range(max_iter):
        active = rs > target
        if check_every and i % check_every == 0 and not bool(active.any()):
            break
        ap = apply(p)
        curvature = batch_dot(p, ap)
        alpha = torch.where(active, rs / torch.where(active, curvature, torch.ones_like(curvature)),
                            torch.zeros_like(rs))
        x = x + alpha.reshape(shape) * p
        r = r - alpha.reshape(shape) * ap
        rs_new = batch_dot(r, r)
        beta = torch.where(active, rs_new / torch.where(active, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = torch.where(active.reshape(shape), r + beta.reshape(shape) * p, p)
        rs = torch.where(active, rs_new, rs)
    return x


def cg_prox(forward: Callable[[Tensor], Tensor], adjoint: Callable[[Tensor], Tensor], z: Tensor, y: Tensor,
            rho: float | Tensor, x0: Tensor | None = None, tol: float = 1e-6, max_iter: int = 200,
            check_every: int | None = None) -> Tensor:
    """argmin_x ||y - A x||^2 + rho ||x - z||^2, i.e. (A^T A + rho I) x = A^T y + rho z, by CG."""
    r = expand_per_image(rho, z)
    rhs = adjoint(y) + r * z
    return conjugate_gradient(lambda v: adjoint(forward(v)) + r * v, rhs, x0=z if x0 is None else x0,
                              tol=tol, max_iter=max_iter, check_every=check_every)
