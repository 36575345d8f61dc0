"""Separable linear operators A(x)_c = M_rows X_c M_cols^T and their SVD (DDRM `SRConv` / `Deblurring`).

Used by `sr4` (bicubic Resizer, M = 64x256) and `deblur_gaussian` (reflect-padded Gaussian, M = 256x256).
Spec solvers-baselines.md §4.4: SVD of each 1-D matrix M = U_1 S_1 V_1^T, 1-D singular values below a
threshold zeroed (DDRM: ZERO = 3e-2; pass 0 for the exact operator), 2-D singular values
s_(a,b) = S_r[a] S_c[b], the (a, b) pairs with a < rows, b < cols sorted in descending order (stable)
followed by the remaining (a, b) of the input grid (singular value 0), each repeated for the C
channels (channel-minor). U and V share that order on the first m = C*h_out*w_out indices.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from operators.base import SVD, LinearOperator, OperatorError, Tensor
from operators.linalg import expand_per_image

DDRM_ZERO = 3e-2


def apply_separable(rows: Tensor, cols: Tensor, x: Tensor) -> Tensor:
    """rows @ X @ cols^T on the last two axes."""
    return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


def inverse_permutation(perm: Tensor) -> Tensor:
    """inv with inv[..., perm[..., k]] = k (a scatter; no sort)."""
    ar = torch.arange(perm.shape[-1], device=perm.device).expand_as(perm)
    return torch.empty_like(perm).scatter_(-1, perm, ar)


_SVD_CACHE: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}


def svd_1d(matrix: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Full SVD (U, S, V^T) of a small float64 matrix, cached by content (operators are rebuilt per batch).

    Runs single-threaded: LAPACK's threaded SVD of a 256x256 matrix is up to 50x slower on a busy 2-core CPU.
    """
    m = matrix.detach().to("cpu", torch.float64).contiguous()
    key = (tuple(m.shape), hashlib.sha1(m.numpy().tobytes()).hexdigest())
    if key not in _SVD_CACHE:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _SVD_CACHE[key] = torch.linalg.svd(m)
        finally:
            torch.set_num_threads(threads)
    return _SVD_CACHE[key]


class SeparableSVD(SVD):
    """SVD of X -> R X C^T with R (h_out, H), C (w_out, W), C channels."""

    def __init__(self, rows: Tensor, cols: Tensor, channels: int, threshold: float = DDRM_ZERO) -> None:
        self.threshold = float(threshold)
        self.channels = channels
        self.h_out, self.h = rows.shape
        self.w_out, self.w = cols.shape
        self.n = channels * self.h * self.w
        self.m = channels * self.h_out * self.w_out
        u_r, s_r, vt_r = svd_1d(rows)  # full_matrices: V is (H, H)
        u_c, s_c, vt_c = svd_1d(cols)
        s_r = torch.where(s_r < self.threshold, torch.zeros_like(s_r), s_r)
        s_c = torch.where(s_c < self.threshold, torch.zeros_like(s_c), s_c)
        self.u_r, self.v_r, self.u_c, self.v_c = u_r, vt_r.T, u_c, vt_c.T
        block = torch.outer(s_r, s_c).reshape(-1)  # (h_out * w_out,), (a, b) row-major
        order = torch.from_numpy(np.argsort(-block.numpy(), kind="stable"))  # descending, ties in (a, b) order
        a, b = order // self.w_out, order % self.w_out
        inside = torch.zeros(self.h, self.w, dtype=torch.bool)
        inside[: self.h_out, : self.w_out] = True
        rest = torch.nonzero(~inside.reshape(-1)).reshape(-1)
        perm_u = order  # spectral index k < h_out*w_out -> (a, b) in the output grid
        perm_v = torch.cat([a * self.w + b, rest])  # spectral index -> (a, b) in the input grid
        # one gather per map: spectral entry C*k + c <-> flat (C, grid) entry c*|grid| + perm[k]
        chan = torch.arange(channels)
        self.index_u = (chan[None] * (self.h_out * self.w_out) + perm_u[:, None]).reshape(-1)
        self.index_v = (chan[None] * (self.h * self.w) + perm_v[:, None]).reshape(-1)
        self.inverse_u = inverse_permutation(self.index_u)
        self.inverse_v = inverse_permutation(self.index_v)
        s = torch.cat([block[order], torch.zeros(self.h * self.w - block.numel(), dtype=torch.float64)])
        self._singulars = s.repeat_interleave(channels)[None]
        self.grid_s = torch.zeros(self.h, self.w, dtype=torch.float64)  # s on the input grid (0 outside)
        self.grid_s[: self.h_out, : self.w_out] = block.reshape(self.h_out, self.w_out)
        self._on: dict[tuple, Tensor] = {}  # factors / indices converted to a (dtype, device), once

    def _m(self, name: str, like: Tensor) -> Tensor:
        """Factor `name` ("v_r", "v_r.T", "grid_s", ...) in like's dtype on like's device, cached: the
        conversion and host-device copy happen once per device, never per call."""
        key = (name, like.dtype, like.device)
        if key not in self._on:
            attr, _, transpose = name.partition(".")
            t = getattr(self, attr)
            self._on[key] = (t.T if transpose else t).to(dtype=like.dtype, device=like.device)
        return self._on[key]

    def _gather(self, t: Tensor, index: str) -> Tensor:
        key = (index, t.device)
        if key not in self._on:
            self._on[key] = getattr(self, index).to(t.device)
        return t.reshape(t.shape[0], -1).index_select(1, self._on[key])

    def _v_t(self, x: Tensor) -> Tensor:  # V^T on the grid: (B, C, H, W) -> (B, C, H, W)
        return apply_separable(self._m("v_r.T", x), self._m("v_c.T", x), x)

    def _v(self, g: Tensor) -> Tensor:
        return apply_separable(self._m("v_r", g), self._m("v_c", g), g)

    def _u_t(self, y: Tensor) -> Tensor:  # U^T on the grid: (B, C, h_out, w_out)
        return apply_separable(self._m("u_r.T", y), self._m("u_c.T", y), y)

    def _u(self, g: Tensor) -> Tensor:
        return apply_separable(self._m("u_r", g), self._m("u_c", g), g)

    def _embed(self, g: Tensor) -> Tensor:  # output grid -> input grid (zeros outside)
        return torch.nn.functional.pad(g, (0, self.w - self.w_out, 0, self.h - self.h_out))

    def Vt(self, x: Tensor) -> Tensor:
        return self._gather(self._v_t(x), "index_v")

    def V(self, v: Tensor) -> Tensor:
        return self._v(self._gather(v, "inverse_v").reshape(v.shape[0], self.channels, self.h, self.w))

    def Ut(self, y: Tensor) -> Tensor:
        return self._gather(self._u_t(y), "index_u")

    def U(self, u: Tensor) -> Tensor:
        return self._u(self._gather(u, "inverse_u").reshape(u.shape[0], self.channels, self.h_out, self.w_out))

    def singulars(self, batch: int | None = None) -> Tensor:
        return self._singulars if batch is None else self._singulars.expand(batch, -1)

    # the generic spectral formulas of SVD, evaluated on the grid (no permutations)
    def A(self, x: Tensor) -> Tensor:
        s = self._m("grid_s", x)[: self.h_out, : self.w_out]
        return self._u(s * self._v_t(x)[..., : self.h_out, : self.w_out])

    def At(self, y: Tensor) -> Tensor:
        return self._v(self._m("grid_s", y) * self._embed(self._u_t(y)))

    def pinv(self, y: Tensor) -> Tensor:
        key = ("grid_s_inv", y.dtype, y.device)
        if key not in self._on:
            s = self._m("grid_s", y)
            self._on[key] = torch.where(s > 0, 1 / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))
        return self._v(self._on[key] * self._embed(self._u_t(y)))

    def prox(self, z: Tensor, y: Tensor, rho: float | Tensor) -> Tensor:
        s = self._m("grid_s", z)
        r = expand_per_image(rho, z)
        return self._v((s * self._embed(self._u_t(y)) + r * self._v_t(z)) / (s * s + r))


class SeparableOperator(LinearOperator):
    """A(x)_c = rows @ X_c @ cols^T; subclasses set `rows`, `cols` (float64) in __init__.

    `svd` zeroes 1-D singular values below `svd_threshold` (DDRM's 3e-2 by default); `svd_at(t)` gives
    the SVD for another threshold (0 = the exact operator). `pinv` = V S^+ U^T of `svd` (truncated).
    `prox(..., method="svd")` is exact (threshold 0); "cg" solves the normal equations by CG.
    """

    rows: Tensor
    cols: Tensor
    prox_methods: tuple[str, ...] = ("svd", "cg")
    svd_threshold: float = DDRM_ZERO
    prox_method: str = "svd"

    def _set_prox_method(self, method: str) -> None:
        if method not in self.prox_methods:
            raise OperatorError(f"{self.name}: unknown prox method {method!r}; valid: {', '.join(self.prox_methods)}")
        self.prox_method = method

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self.image_shape[0], self.rows.shape[0], self.cols.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return apply_separable(self.param("rows", x), self.param("cols", x), x)

    def adjoint(self, y: Tensor) -> Tensor:
        if y.ndim != 4 or tuple(y.shape[1:]) != self.output_shape:
            raise OperatorError(f"{self.name}: adjoint expects measurements of shape (B, {', '.join(map(str, self.output_shape))}), "
                                f"got {tuple(y.shape)}")
        self.check_batch(y.shape[0])
        return apply_separable(self.param("rows", y).T, self.param("cols", y).T, y)

    def svd_at(self, threshold: float) -> SeparableSVD:
        key = ("svd", float(threshold))
        if key not in self._cache:
            self._cache[key] = SeparableSVD(self.rows, self.cols, self.image_shape[0], threshold)
        return self._cache[key]

    @property
    def svd(self) -> SeparableSVD:
        return self.svd_at(self.svd_threshold)

    def pinv(self, y: Tensor) -> Tensor:
        """V S^+ U^T y with the thresholded singular values of `svd` (DDRM's H_pinv)."""
        return self.svd.pinv(y)

    def prox(self, z: Tensor, y: Tensor, rho: float | Tensor, method: str | None = None, **kwargs: Any) -> Tensor:
        method = method or self.prox_method
        if method == "svd":
            self.check_input(z)
            return self.svd_at(0.0).prox(z, y, rho)
        if method == "cg":
            return self.prox_cg(z, y, rho, **kwargs)
        return self._prox_other(method, z, y, rho, **kwargs)

    def _prox_other(self, method: str, z: Tensor, y: Tensor, rho: float | Tensor, **kwargs: Any) -> Tensor:
        raise OperatorError(f"{self.name}: unknown prox method {method!r}; valid: {', '.join(self.prox_methods)}")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "svd_threshold": self.svd_threshold, "prox_method": self.prox_method}
