"""`dense`: a linear operator given by a matrix, y = M x with x flattened, for vector problems.

The matrix M (m x d, m <= d, d = C*H*W) is stored through its thin SVD M = U diag(s) V_r^T
(U: m x m orthogonal, s: m values sorted descending, zeros past the rank, V_r: d x m orthonormal
columns). It is given either as `matrix` (an SVD is taken in float64; singular values below
`rcond` x the largest are set to zero) or directly as `U`, `s`, `V` (V = V_r, d x m), which is how
the Gaussian-mixture benchmark builds its operators (spec gmm-benchmark.md §2: the random singular
vectors of a Gaussian matrix with new singular values). Leading dimension P (1 = shared, or one matrix
per image) as for every operator's per-image parameters.

Vectors: an image x (B, C, H, W) is flattened as `x.reshape(B, -1)` (C, then H, then W; for the
vector priors' (B, 1, 1, d) layout this is the vector itself); measurements are (B, m).

Maps (all exact, O(B d m) each, float64 parameters cast to the input's dtype once and cached):
  forward  U (s * V_r^T x)                adjoint  V_r (s * U^T y)
  pinv     V_r (s^+ * U^T y)              prox     z + V_r [(s U^T y + rho V_r^T z) / (s^2 + rho) - V_r^T z]
  svd      the full SVD of the `SVD` contract (operators/base.py): V = [V_r, V_perp] is the d x d
           orthogonal matrix Q of a Householder QR of V_r (Q = H_1 ... H_m = I - Y T Y^T in compact WY form,
           Y: d x m reflectors, T: m x m; never formed), with its first m columns multiplied by the signs of R's diagonal so that
           V[:, :m] = V_r exactly (V_r has orthonormal columns, so R = diag(+-1)).
The d x d matrix V is never stored: Vt / V cost O(B d m), which is what makes DDRM-type solvers affordable
at d = 800 with 2000 samples.
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch

from operators.base import SVD, LinearOperator, OperatorError, Tensor
from operators.linalg import expand_per_image


class DenseOperator(LinearOperator):
    """y = M x for a dense (m x d) matrix M given by its SVD (module docstring)."""

    name = "dense"
    batched_params: ClassVar[tuple[str, ...]] = ("left", "singular_values", "right", "reflectors", "tau", "signs",
                                                  "wy")

    def __init__(self, image_shape: Sequence[int] = (1, 1, 8), sigma_y: float = 0.0,
                 seeds: Sequence[int] | None = None, shared_params: bool = False,
                 matrix: Tensor | Sequence[Sequence[float]] | None = None, U: Tensor | None = None,
                 s: Tensor | None = None, V: Tensor | None = None, rcond: float = 1e-12) -> None:
        super().__init__(image_shape, sigma_y, seeds, shared_params)
        d = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        if matrix is not None:
            if U is not None or s is not None or V is not None:
                raise OperatorError("dense: give either `matrix` or its SVD (`U`, `s`, `V`), not both")
            M = _batched(torch.as_tensor(matrix, dtype=torch.float64), 2, "matrix")
            if M.shape[-1] != d or M.shape[-2] > d or M.shape[-2] < 1:
                raise OperatorError(f"dense: matrix must be (m, {d}) with 1 <= m <= {d} for images "
                                    f"{self.image_shape}, got {tuple(M.shape[-2:])}")
            U, s, Vh = torch.linalg.svd(M, full_matrices=False)
            s = torch.where(s > rcond * s.amax(-1, keepdim=True), s, torch.zeros_like(s))
            V = Vh.transpose(-1, -2)
        elif U is None or s is None or V is None:
            raise OperatorError("dense: pass `matrix=` (m x d) or all of `U` (m x m), `s` (m,) and `V` (d x m)")
        U = _batched(torch.as_tensor(U, dtype=torch.float64), 2, "U")
        s = _batched(torch.as_tensor(s, dtype=torch.float64), 1, "s")
        V = _batched(torch.as_tensor(V, dtype=torch.float64), 2, "V")
        m = U.shape[-1]
        if U.shape[-2:] != (m, m) or s.shape[-1] != m or V.shape[-2:] != (d, m) or m > d:
            raise OperatorError(f"dense: need U (m, m), s (m,), V ({d}, m) with m <= {d}; got U "
                                f"{tuple(U.shape[-2:])}, s {tuple(s.shape[-1:])}, V {tuple(V.shape[-2:])}")
        if (s < 0).any():
            raise OperatorError("dense: singular values must be >= 0")
        P = max(U.shape[0], s.shape[0], V.shape[0])
        if {U.shape[0], s.shape[0], V.shape[0]} - {1, P}:
            raise OperatorError(f"dense: U, s, V have different leading dimensions "
                                f"{U.shape[0]}, {s.shape[0]}, {V.shape[0]}")
        self.m, self.d = m, d
        self.left = U.expand(P, m, m).contiguous()
        self.singular_values = s.expand(P, m).contiguous()
        self.right = V.expand(P, d, m).contiguous()
        a, tau = torch.geqrf(self.right)
        self.signs = torch.sign(torch.diagonal(a, dim1=-2, dim2=-1))  # R = diag(+-1)
        eye = torch.eye(d, m, dtype=torch.float64)
        self.reflectors = torch.tril(a, diagonal=-1) + eye  # column i: Householder vector of H_i
        self.tau = tau
        self.wy = _wy_factor(self.reflectors, tau)  # Q = H_1 ... H_m = I - Y T Y^T (compact WY form)

    # --- maps ---------------------------------------------------------------------------------
    def _flat(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return x.reshape(x.shape[0], self.d)

    def _image(self, v: Tensor) -> Tensor:
        return v.reshape(v.shape[0], *self.image_shape)

    def _check_measurement(self, y: Tensor) -> Tensor:
        if y.ndim != 2 or y.shape[1] != self.m:
            raise OperatorError(f"dense: measurements are (B, {self.m}), got {tuple(y.shape)}")
        self.check_batch(y.shape[0])
        return y

    def forward(self, x: Tensor) -> Tensor:
        X = self._flat(x)
        return self._apply_U(self.param("singular_values", X) * self._apply_Vrt(X))

    def adjoint(self, y: Tensor) -> Tensor:
        u = self._apply_Ut(self._check_measurement(y))
        return self._image(self._apply_Vr(self.param("singular_values", u) * u))

    def pinv(self, y: Tensor) -> Tensor:
        u = self._apply_Ut(self._check_measurement(y))
        s = self.param("singular_values", u)
        inv = torch.where(s > 0, 1 / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))
        return self._image(self._apply_Vr(inv * u))

    def prox(self, z: Tensor, y: Tensor, rho: float | Tensor, **_: Any) -> Tensor:
        """argmin_x ||y - M x||^2 + rho ||x - z||^2 (closed form in the SVD basis)."""
        Z = self._flat(z)
        u = self._apply_Ut(self._check_measurement(y))
        s = self.param("singular_values", u)
        r = expand_per_image(rho, u)
        vz = self._apply_Vrt(Z)
        return self._image(Z + self._apply_Vr((s * u + r * vz) / (s * s + r) - vz))

    @property
    def svd(self) -> "DenseSVD":
        return DenseSVD(self)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "m": self.m, "matrices": self.n_params}

    # --- helpers in the SVD basis (per image or shared) -----------------------------------------
    def _einsum(self, spec_shared: str, attr: str, v: Tensor) -> Tensor:
        mat = self.param(attr, v)
        if self.n_params == 1:  # one matrix for the batch: a plain matrix product (faster than einsum)
            return v @ (mat[0].T if _TRANSPOSED[spec_shared] else mat[0])
        return torch.einsum(spec_shared.replace("p", "b", 1), mat, v)

    def _apply_U(self, u: Tensor) -> Tensor:
        return self._einsum("pij,bj->bi", "left", u)

    def _apply_Ut(self, y: Tensor) -> Tensor:
        return self._einsum("pji,bj->bi", "left", y)

    def _apply_Vr(self, c: Tensor) -> Tensor:
        return self._einsum("pdm,bm->bd", "right", c)

    def _apply_Vrt(self, X: Tensor) -> Tensor:
        return self._einsum("pdm,bd->bm", "right", X)

    def _apply_Q(self, X: Tensor, transpose: bool) -> Tensor:
        """Q x (or Q^T x) for rows of X (B, d): x - Y T Y^T x (T^T for Q^T), two thin products."""
        T = self.param("wy", X)
        c = self._einsum("pdm,bd->bm", "reflectors", X)
        c = torch.einsum("pkm,bk->bm" if transpose else "pmk,bk->bm", T, c) if self.n_params == 1 else \
            torch.einsum("bkm,bk->bm" if transpose else "bmk,bk->bm", T, c)
        return X - self._einsum("pdm,bm->bd", "reflectors", c)


def _wy_factor(Y: Tensor, tau: Tensor) -> Tensor:
    """T (P, m, m) upper triangular with H_1 ... H_m = I - Y T Y^T (LAPACK larft, forward, columnwise)."""
    P, _, m = Y.shape
    T = torch.zeros(P, m, m, dtype=Y.dtype)
    for i in range(m):
        T[:, i, i] = tau[:, i]
        if i:
            yy = torch.einsum("pdk,pd->pk", Y[:, :, :i], Y[:, :, i])  # Y[:, :i]^T y_i
            T[:, :i, i] = -tau[:, i:i + 1] * torch.einsum("pjk,pk->pj", T[:, :i, :i], yy)
    return T


#: einsum spec of a shared (P = 1) matrix M applied to rows v -> whether it is v @ M^T (else v @ M)
_TRANSPOSED = {"pdm,bd->bm": False, "pdm,bm->bd": True, "pij,bj->bi": True, "pji,bj->bi": False}


def _batched(t: Tensor, ndim: int, what: str) -> Tensor:
    if t.ndim == ndim:
        return t.unsqueeze(0)
    if t.ndim == ndim + 1:
        return t
    raise OperatorError(f"dense: `{what}` must have {ndim} dimensions (or {ndim + 1} with one per image), "
                        f"got shape {tuple(t.shape)}")


class DenseSVD(SVD):
    """The full SVD of a `DenseOperator`: V = Q diag(signs, 1, ..., 1), Q by its Householder reflectors."""

    def __init__(self, op: DenseOperator) -> None:
        self.op = op
        self.n, self.m = op.d, op.m

    def Vt(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, n): D Q^T x, Q^T = H_m ... H_1
        X = self.op._apply_Q(x.reshape(x.shape[0], self.n), transpose=True)
        signs = self.op.param("signs", X)
        return torch.cat([X[:, : self.m] * signs, X[:, self.m:]], dim=1)

    def V(self, v: Tensor) -> Tensor:  # (B, n) -> image: Q D v, Q = H_1 ... H_m
        signs = self.op.param("signs", v)
        v = torch.cat([v[:, : self.m] * signs, v[:, self.m:]], dim=1)
        return self.op._image(self.op._apply_Q(v, transpose=False))

    def U(self, u: Tensor) -> Tensor:
        return self.op._apply_U(u)

    def Ut(self, y: Tensor) -> Tensor:
        return self.op._apply_Ut(y)

    def singulars(self, batch: int | None = None) -> Tensor:
        s = torch.nn.functional.pad(self.op.singular_values, (0, self.n - self.m))
        return s if batch is None or s.shape[0] == batch else s.expand(batch, -1)
