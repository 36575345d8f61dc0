"""Motion-blur pseudo-inverse (circular model) and the BKSE nonlinear blur (network, loading, forward).

* `deblur_motion.pinv`: as a dense matrix, the truncated-SVD pseudo-inverse of the dense circular matrix
  (characterised without an SVD: Moore-Penrose identities, orthogonal split, norms, rank); Moore-Penrose
  identities of the circular model on the kept spectrum; the Score-SDE / MCG projection is an idempotent orthogonal projection under that model.
* `deblur_nonlinear`: our KernelWizard's state-dict names and shapes equal the manifest derived from the
  reference source (tests/data/bkse_kernel_wizard_state.json); a random-weights state dict loads through
  the operator's path; the forward maps [-1, 1] -> [0, 1] -> [-1, 1] exactly (identity network -> A(x) = x);
  latent modes (SPGD seed 0, per image, per call); errors name the problem.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import operators
from operators import OperatorError
from operators.bkse_kernel_wizard import KernelWizard
from operators.nonlinear_blur import latent_kernel
from solvers import ddpm_steps as dd

SHAPE = (3, 32, 32)
MANIFEST = Path(__file__).parent / "data" / "bkse_kernel_wizard_state.json"


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------ motion blur pinv (circular model)
def motion(seeds=(0, 1), **extra):
    return operators.get("deblur_motion", image_shape=SHAPE, seeds=list(seeds), **extra)


def dense(apply, shape) -> np.ndarray:
    """The (H W) x (H W) matrix of a per-channel linear map (one kernel), column j = apply(e_j)."""
    n = shape[1] * shape[2]
    basis = torch.zeros(n, *shape, dtype=torch.float64)
    basis[:, 0].reshape(n, -1)[torch.arange(n), torch.arange(n)] = 1
    return apply(basis)[:, 0].reshape(n, n).T.numpy()


def spectral_norm(m: np.ndarray, iters: int = 40, block: int = 8) -> float:
    """||m||_2 by block power (subspace) iteration on m^T m (a lower bound converging to the norm)."""
    gram = m.T @ m
    v = np.linalg.qr(np.random.RandomState(0).randn(m.shape[1], block))[0]
    for _ in range(iters):
        v = np.linalg.qr(gram @ v)[0]
    return float(np.sqrt(np.linalg.eigvalsh(v.T @ gram @ v).max()))


def test_motion_pinv_is_the_truncated_svd_pinv_of_the_dense_circular_matrix():
    """P = pinv(M_k) with M = M_k + R, M_k and R orthogonal on both sides, ||R|| < t <= s_min(M_k): that is
    the truncated-SVD pseudo-inverse (singular values below t zeroed), checked without an SVD."""
    shape = (3, 28, 28)  # the smallest image a 55 x 55 kernel fits (n = 784: cheap dense algebra)
    A = operators.get("deblur_motion", image_shape=shape, seeds=[1], kernel_size=55)
    t = A.pinv_threshold
    m, p = dense(A.forward_circular, shape), dense(A.pinv, shape)
    mp, pm = m @ p, p @ m
    k = mp @ m
    r = m - k
    for lhs, rhs in ((pm @ p, p), (mp.T, mp), (pm.T, pm), (r.T @ k, 0 * k), (r @ k.T, 0 * k)):
        np.testing.assert_allclose(lhs, rhs, rtol=0, atol=1e-9)
    assert spectral_norm(r) < t and spectral_norm(p) <= (1 + 1e-9) / t
    # rank = number of DFT frequencies with |K(f)| >= t (full 2-D spectrum of the wrapped kernel)
    kernel = A.kernel[0].numpy()
    wrapped = np.zeros(shape[1:])
    idx = (np.arange(kernel.shape[0]) - kernel.shape[0] // 2) % shape[1]
    np.add.at(wrapped, (idx[:, None], idx[None, :]), kernel)
    rank = int((np.abs(np.fft.fft2(wrapped)) >= t).sum())
    assert 0 < rank < m.shape[0] and round(float(np.trace(pm))) == rank


def test_motion_pinv_moore_penrose_identities_of_the_circular_model():
    A = motion()
    Ac, Ap = A.forward_circular, A.pinv
    x, y, w = rand(2, *SHAPE, seed=2), rand(2, *SHAPE, seed=3), rand(2, *SHAPE, seed=4)
    v = Ap(Ac(x))  # a vector of the kept subspace
    torch.testing.assert_close(Ac(Ap(Ac(v))), Ac(v), rtol=0, atol=1e-10)
    torch.testing.assert_close(Ap(Ac(Ap(y))), Ap(y), rtol=0, atol=1e-10)
    for op in (lambda t: Ap(Ac(t)), lambda t: Ac(Ap(t))):  # both products are symmetric
        assert float((op(x) * w).sum()) == pytest.approx(float((x * op(w)).sum()), rel=1e-10)
    # on the dropped spectrum A_c A_c^+ A_c != A_c: the truncation is real
    assert (Ac(Ap(Ac(x))) - Ac(x)).abs().max() > 1e-3


def test_motion_projection_is_idempotent_under_the_circular_model():
    A = motion(sigma_y=0.05)
    x, y = rand(2, *SHAPE, seed=5), A.measure(rand(2, *SHAPE, seed=6), [torch.Generator().manual_seed(i) for i in (7, 8)])
    once = x - A.pinv(A.forward_circular(x) - y)
    torch.testing.assert_close(once - A.pinv(A.forward_circular(once) - y), once, rtol=0, atol=1e-10)
    torch.testing.assert_close(dd.project_onto_measurement(x, y, A), once, rtol=0, atol=0)  # uses pinv_forward
    assert dd.has_pinv(A)
    # a projection: the moved part x - P(x) is orthogonal to moves inside the constraint set
    inside = once + (rand(2, *SHAPE, seed=9) - A.pinv(A.forward_circular(rand(2, *SHAPE, seed=9))))
    assert abs(float(((x - once) * (inside - once)).sum())) < 1e-8 * float((x - once).norm() * (inside - once).norm())


def test_motion_pinv_is_per_image_threshold_parameter_and_errors():
    A = motion(seeds=(0, 1))
    y = rand(2, *SHAPE, seed=10).float()
    batch = A.pinv(y)
    assert torch.equal(batch[1:], motion(seeds=(1,)).pinv(y[1:]))  # bit-identical alone and in a batch
    assert batch.dtype == torch.float32 and batch.shape == y.shape
    strict = motion(seeds=(0, 1), pinv_threshold=0.2)
    kept = lambda op: (op.pinv(op.forward_circular(rand(2, *SHAPE, seed=11))).norm())  # noqa: E731
    assert kept(strict) < kept(A)
    assert A.describe()["pinv_threshold"] == 3e-2 and strict.describe()["pinv_threshold"] == 0.2
    with pytest.raises(OperatorError, match="pinv_threshold"):
        motion(pinv_threshold=0.0)


# ------------------------------------------------------------------ BKSE KernelWizard / deblur_nonlinear
def test_kernel_wizard_state_dict_matches_the_reference_manifest():
    manifest = json.loads(MANIFEST.read_text())
    with torch.device("meta"):
        net = KernelWizard()
    ours = [[k, list(v.shape)] for k, v in net.state_dict().items()]
    assert ours == manifest["state_dict"]  # names, shapes and order
    assert sum(p.numel() for p in net.parameters()) == manifest["num_parameters"] == 115_265_475
    shapes = dict(net.state_dict().items())
    assert tuple(shapes["adapter.model.submodule.submodule.submodule.submodule.up.1.weight"].shape) == (1024, 512, 4, 4)
    assert tuple(shapes["kernel_extractor.model.1.weight"].shape) == (64, 128, 7, 7)
    assert tuple(shapes["recon_trunk.28.weight"].shape) == (3, 64, 3, 3)


def random_state() -> dict[str, torch.Tensor]:
    """Random weights of the right names and shapes (scaled by 1/sqrt(fan_in))."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in KernelWizard().state_dict().items()}
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, shape in shapes.items():
        if k.startswith("kernel_extractor."):  # 91 M parameters unused by adaptKernel: stride-0 zeros save small
            state[k] = torch.zeros(1).expand(shape)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
            state[k] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    return state


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """One random-weights file (~100 MB) for the module, wrapped like some releases ("params", "module.")."""
    path = tmp_path_factory.mktemp("bkse") / "GOPRO_wVAE.pth"
    torch.save({"params": {f"module.{k}": v for k, v in random_state().items()}}, path)
    return path


def nonlinear(weights_path, shape=(3, 128, 128), **extra):
    return operators.get("deblur_nonlinear", image_shape=shape, weights=weights_path, **extra)


def image(batch: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, 128, 128, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_nonlinear_blur_forward_through_the_loading_path(weights, monkeypatch):
    monkeypatch.setenv("RESTOREBENCH_CHECKPOINTS", str(weights.parent))
    A = operators.get("deblur_nonlinear", image_shape=(3, 128, 128), seeds=[0, 1])  # the default path
    x = image(2, 0).requires_grad_(True)
    y = A(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert y.min() >= -1 and y.max() <= 1 and (y - x).abs().max() > 1e-3
    y.sum().backward()  # DPS-type solvers differentiate through A
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(A.select([1])(x[1:]), y[1:], rtol=0, atol=1e-6)  # alone = in the batch


def test_nonlinear_blur_maps_to_unit_range_and_back(weights):
    A = nonlinear(weights, seeds=[0])
    last = A.network.recon_trunk[-1]  # zeroed for this test: adaptKernel(s) = s + 0
    saved = last.weight.clone(), last.bias.clone()
    x = image(1, 1)
    try:
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
            torch.testing.assert_close(A(x), x, rtol=0, atol=1e-6)  # clip(2 ((x + 1) / 2) - 1) = x
            torch.testing.assert_close(A(3 * x), (3 * x).clamp(-1, 1), rtol=0, atol=1e-6)  # clipped
    finally:
        with torch.no_grad():
            last.weight.copy_(saved[0])
            last.bias.copy_(saved[1])


def test_nonlinear_blur_latent_modes(weights):
    np.random.seed(0)
    spgd_kernel = np.random.randn(1, 512, 2, 2) * 1.2  # SPGD / DAPS: fixed once after np.random.seed(0)
    assert np.array_equal(latent_kernel(0), spgd_kernel)
    big = nonlinear(weights, shape=(3, 256, 256), seeds=[3, 4], latent_mode="spgd")
    assert torch.equal(big.latent, torch.from_numpy(spgd_kernel))
    per_image = nonlinear(weights, shape=(3, 256, 256), seeds=[3, 4])
    assert per_image.latent_mode == "per_image" and per_image.latent.shape == (2, 512, 2, 2)
    assert torch.equal(per_image.latent[1:], torch.from_numpy(latent_kernel(4)))

    x = image(1, 2)
    fixed = nonlinear(weights, seeds=[0])
    spgd = nonlinear(weights, seeds=[5], latent_mode="spgd")
    per_call = nonlinear(weights, seeds=[0], latent_mode="per_call")
    with torch.no_grad():
        y_fixed, first, second = fixed(x), per_call(x), per_call(x)
        assert torch.equal(first, y_fixed)  # per_call's first draw is the per-image kernel
        assert (second - first).abs().max() > 1e-5  # DPS: redrawn on every call
        assert torch.equal(spgd(x), y_fixed)  # seed 0 is the SPGD kernel
    assert fixed.describe()["latent_shape"] == [512, 1, 1]


def test_nonlinear_blur_errors(weights, tmp_path):
    with pytest.raises(OperatorError, match="multiples of 128"):
        nonlinear(weights, shape=(3, 100, 128))
    with pytest.raises(OperatorError, match="latent_mode"):
        nonlinear(weights, latent_mode="dps")
    with torch.device("meta"):
        names = list(KernelWizard().state_dict())
    torch.save({"recon_trunk.28.weight": torch.zeros(3, 32, 3, 3), "extra.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(OperatorError, match=(rf"not the BKSE GOPRO_wVAE KernelWizard state dict \(missing keys: "
                                             rf"{names[0]}.* and {len(names) - 4} more; unexpected keys: extra.weight; "
                                             r"wrong shapes: recon_trunk.28.weight \(3, 32, 3, 3\) != \(3, 64, 3, 3\)")):
        nonlinear(tmp_path / "bad.pth")


def test_motion_circular_model_and_cg_prox_are_bit_identical_alone_and_in_a_batch():
    # 32x32 with a 61-tap kernel: the kernel wraps onto the image several times, so a batched scatter or a
    # batched FFT that rounds differently would show; at rho ~ 1e-7 CG amplifies any such difference to ~1e-2
    A = motion(seeds=(0, 1, 2, 3))
    x, y = rand(4, *SHAPE, seed=12).float(), rand(4, *SHAPE, seed=13).float()
    alone = A.select([2])
    assert torch.equal(A._otf(x)[2:3], alone._otf(x))
    assert torch.equal(A.forward_circular(x)[2:3], alone.forward_circular(x[2:3]))
    assert torch.equal(A.prox_fft(x, y, 1e-3)[2:3], alone.prox_fft(x[2:3], y[2:3], 1e-3))
    for rho in (1e-7, 1e-2):
        batch = A.prox(x, y, rho, method="cg", tol=1e-3, max_iter=30)
        assert torch.equal(batch[2:3], alone.prox(x[2:3], y[2:3], rho, method="cg", tol=1e-3, max_iter=30))
    # and the batched CG solves the exact prox of the reflect-padded operator (normal equations)
    rho = 0.5
    sol = A.prox(x.double(), y.double(), rho, method="cg", tol=1e-10, max_iter=500)
    lhs = A.adjoint(A.forward(sol)) + rho * sol
    torch.testing.assert_close(lhs, A.adjoint(y.double()) + rho * x.double(), rtol=0, atol=1e-7)
