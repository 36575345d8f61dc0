"""The dense operator (operators/dense.py): forward/adjoint/pinv/prox/SVD identities against explicit matrices."""
import pytest
import torch

import operators
from operators.base import OperatorError

D, M = 10, 3


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    mat = torch.randn(M, D, generator=g, dtype=torch.float64)
    A = operators.get("dense", image_shape=(1, 1, D), sigma_y=0.1, matrix=mat)
    x = torch.randn(4, 1, 1, D, generator=g, dtype=torch.float64)
    y = torch.randn(4, M, generator=g, dtype=torch.float64)
    return mat, A, x, y


def test_forward_adjoint_pinv_equal_the_matrix(setup):
    mat, A, x, y = setup
    X = x.reshape(4, D)
    assert torch.allclose(A.forward(x), X @ mat.T, atol=1e-12)
    assert torch.allclose(A.adjoint(y).reshape(4, D), y @ mat, atol=1e-12)
    assert torch.allclose(A.pinv(y).reshape(4, D), y @ torch.linalg.pinv(mat).T, atol=1e-12)
    # <A x, y> = <x, A^T y>
    assert torch.allclose((A.forward(x) * y).sum(1), (X * A.adjoint(y).reshape(4, D)).sum(1), atol=1e-12)


def test_prox_is_the_regularised_least_squares_solution(setup):
    mat, A, x, y = setup
    rho = 0.37
    ref = torch.linalg.solve(mat.T @ mat + rho * torch.eye(D, dtype=torch.float64),
                             (y @ mat + rho * x.reshape(4, D)).T).T
    assert torch.allclose(A.prox(x, y, rho).reshape(4, D), ref, atol=1e-12)
    assert torch.allclose(A.svd.prox(x, y, rho).reshape(4, D), ref, atol=1e-12)


def test_svd_contract_full_orthogonal_V_whose_first_columns_are_the_row_space(setup):
    mat, A, x, y = setup
    svd = A.svd
    V = svd.Vt(torch.eye(D, dtype=torch.float64).reshape(D, 1, 1, D))  # row j: V^T e_j = V[j, :]
    assert torch.allclose(V.T @ V, torch.eye(D, dtype=torch.float64), atol=1e-12)
    _, s, Vh = torch.linalg.svd(mat, full_matrices=False)
    assert torch.allclose(V[:, :M], Vh.T, atol=1e-12)  # V[:, :m] = V_r exactly (signs fixed)
    assert torch.allclose(svd.singulars()[0, :M], s, atol=1e-12)
    assert torch.all(svd.singulars()[0, M:] == 0)
    v = torch.randn(4, D, dtype=torch.float64)
    assert torch.allclose(svd.Vt(svd.V(v)), v, atol=1e-12)
    assert torch.allclose(svd.A(x), A.forward(x), atol=1e-12)
    assert torch.allclose(svd.At(y), A.adjoint(y), atol=1e-12)
    assert torch.allclose(svd.pinv(y), A.pinv(y), atol=1e-12)


def test_given_svd_with_per_image_matrices_and_select():
    g = torch.Generator().manual_seed(1)
    mats = torch.randn(3, 2, 6, generator=g, dtype=torch.float64)
    U, s, Vh = torch.linalg.svd(mats, full_matrices=False)
    A = operators.get("dense", image_shape=(1, 1, 6), U=U, s=s, V=Vh.transpose(1, 2))
    x = torch.randn(3, 1, 1, 6, generator=g, dtype=torch.float64)
    assert torch.allclose(A.forward(x), torch.einsum("bmd,bd->bm", mats, x.reshape(3, 6)), atol=1e-12)
    sub = A.select([2, 2])
    assert torch.allclose(sub.forward(x[[2, 2]]), A.forward(x)[[2, 2]], atol=1e-12)
    assert torch.allclose(A.svd.Vt(A.svd.V(x.reshape(3, 6))), x.reshape(3, 6), atol=1e-12)


def test_bad_shapes_are_one_line_operator_errors():
    with pytest.raises(OperatorError, match=r"matrix must be \(m, 6\)"):
        operators.get("dense", image_shape=(1, 1, 6), matrix=torch.randn(2, 5))
    with pytest.raises(OperatorError, match="pass `matrix=`"):
        operators.get("dense", image_shape=(1, 1, 6))
    A = operators.get("dense", image_shape=(1, 1, 6), matrix=torch.randn(2, 6))
    with pytest.raises(OperatorError, match=r"measurements are \(B, 2\)"):
        A.adjoint(torch.randn(1, 3))
