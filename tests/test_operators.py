"""Operators: adjoints, SVDs, pinv / prox equations, reference kernels and masks, batching, errors."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

import operators
from operators import OperatorError
from operators.blur import KernelBlur
from operators.inpainting import random_pixel_mask
from operators.motion_kernel import motion_kernel, motion_kernel_from_seed
from operators.noise import GaussianNoise
from operators.super_resolution import interior_taps

SHAPE = (3, 32, 32)
SEEDS = [3, 11]
LINEAR = {
    "inpaint_random": {},
    "inpaint_box": {"hole_size": 8, "position": "dps", "margin": 4},
    "deblur_gaussian": {"kernel_size": 13, "std": 1.5, "svd_threshold": 0.0},
    "deblur_motion": {},
    "sr4": {"svd_threshold": 0.0},
    "denoise": {},
}
WITH_SVD = ["inpaint_random", "inpaint_box", "deblur_gaussian", "sr4", "denoise"]


def build(task: str, shape=SHAPE, seeds=SEEDS, **extra):
    return operators.get(task, image_shape=shape, seeds=seeds, **{**LINEAR.get(task, {}), **extra})


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def dot(a, b):
    return (a * b).flatten(1).sum(1)


@pytest.mark.parametrize("task", list(LINEAR))
def test_adjoint_identity(task):
    A = build(task)
    x = rand(2, *SHAPE, seed=1)
    y = rand(*A(x).shape, seed=2)
    torch.testing.assert_close(dot(A(x), y), dot(x, A.adjoint(y)), rtol=1e-10, atol=1e-10)


def test_gaussian_fft_path_and_circular_adjoint():
    A = build("deblur_gaussian")
    x = rand(2, *SHAPE, seed=3)
    torch.testing.assert_close(KernelBlur.forward(A, x), A(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(KernelBlur.adjoint(A, x), A.adjoint(x), rtol=0, atol=1e-12)
    M = build("deblur_motion")
    y = rand(2, *SHAPE, seed=4)
    torch.testing.assert_close(dot(M.forward_circular(x), y), dot(x, M.adjoint_circular(y)), rtol=1e-10, atol=1e-10)


def test_reflect_pad_into_matches_torch_reflect_pad():
    from operators.blur import reflect_pad_into
    x = rand(2, 3, 40, 36, seed=23)
    buf = reflect_pad_into(x, 30, (104, 100))
    torch.testing.assert_close(buf[..., :100, :96], torch.nn.functional.pad(x, (30,) * 4, mode="reflect"), rtol=0, atol=0)
    assert not buf[..., 100:, :].any() and not buf[..., 96:].any()


def test_motion_blur_autograd_and_torch_fft_path(monkeypatch):
    A = build("deblur_motion")
    x = rand(2, *SHAPE, seed=21).requires_grad_(True)
    y = rand(2, *SHAPE, seed=22)
    (grad,) = torch.autograd.grad((A(x) * y).sum(), x)
    torch.testing.assert_close(grad, A.adjoint(y))
    monkeypatch.setattr("operators.blur.SCIPY_FFT_ON_CPU", False)
    B = build("deblur_motion")
    torch.testing.assert_close(B(x.detach()), A(x.detach()))
    torch.testing.assert_close(B.adjoint(y), A.adjoint(y))


@pytest.mark.parametrize("task", WITH_SVD)
def test_svd_reproduces_operator_and_is_orthonormal(task):
    A = build(task)
    svd = A.svd
    x = rand(2, *SHAPE, seed=5)
    torch.testing.assert_close(svd.A(x), A(x), rtol=0, atol=1e-10)
    torch.testing.assert_close(operators.SVD.A(svd, x), A(x), rtol=0, atol=1e-10)  # U (S V^T x) via spectral maps
    torch.testing.assert_close(operators.SVD.prox(svd, x, A(x), 0.5), svd.prox(x, A(x), 0.5), rtol=0, atol=1e-10)
    y = A(rand(2, *SHAPE, seed=6))
    torch.testing.assert_close(svd.At(y), A.adjoint(y), rtol=0, atol=1e-10)
    v = rand(2, svd.n, seed=7)
    u = rand(2, svd.m, seed=8)
    torch.testing.assert_close(svd.Vt(svd.V(v)), v, rtol=0, atol=1e-10)  # V^T V = I
    torch.testing.assert_close(svd.Ut(svd.U(u)), u, rtol=0, atol=1e-10)
    torch.testing.assert_close(svd.V(svd.Vt(x)), x, rtol=0, atol=1e-10)  # V square: V V^T = I
    s = svd.singulars()
    assert s.shape[-1] == svd.n and (s >= 0).all()
    nz = (s > 0).to(torch.int8)
    assert (nz[:, :-1] >= nz[:, 1:]).all()  # nonzero ones first
    assert torch.equal(svd.rank, (s > 0).sum(1))


@pytest.mark.parametrize("task", ["sr4", "deblur_gaussian"])
def test_svd_equals_forward_float32_and_threshold(task):
    A = operators.get(task, image_shape=(3, 64, 64))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert (A.svd_at(0.0).A(x) - A(x)).abs().max() < 1e-5
    full, cut = A.svd_at(0.0).singulars(), A.svd.singulars()  # default: DDRM's 3e-2
    assert A.svd.threshold == 3e-2 and int(cut.gt(0).sum()) <= int(full.gt(0).sum()) == 3 * A.rows.shape[0] ** 2


def test_gaussian_ddrm_threshold_zeroes_184_of_256():
    A = operators.get("deblur_gaussian")
    s = A.svd.singulars()[0]
    assert int((s > 0).sum()) == 3 * 72 * 72  # 256 - 184 = 72 nonzero 1-D singulars per axis


def test_mask_svd_per_image_permutations():
    A = build("inpaint_random", seeds=[1, 2, 3])
    x = rand(3, *SHAPE, seed=9)
    vt = A.svd.Vt(x)
    for i in range(3):
        kept = A.mask[i, 0].reshape(-1).repeat_interleave(3).bool()
        flat = x[i].permute(1, 2, 0).reshape(-1)  # pixel-major, channel-minor
        torch.testing.assert_close(vt[i], torch.cat([flat[kept], flat[~kept]]))
        assert int(A.svd.rank[i]) == int(kept.sum())


@pytest.mark.parametrize("task", ["inpaint_random", "inpaint_box", "sr4", "denoise", "deblur_gaussian"])
def test_pinv_normal_equations(task):
    A = build(task)
    y = A(rand(2, *SHAPE, seed=10)) + 0.1 * rand(*A(rand(2, *SHAPE)).shape, seed=11)
    if task == "deblur_gaussian":  # the exact inverse exists; check it on y in the range of A
        y = A(rand(2, *SHAPE, seed=10))
        torch.testing.assert_close(A(A.pinv(y)), y, rtol=0, atol=1e-6)
    x = A.pinv(y)
    res = A.adjoint(A(x)) - A.adjoint(y)
    assert (res.norm() / A.adjoint(y).norm()) < 1e-4


PROX_CASES = [("inpaint_random", None), ("inpaint_box", None), ("denoise", None), ("sr4", "svd"), ("sr4", "cg"),
              ("deblur_gaussian", "svd"), ("deblur_gaussian", "cg"), ("deblur_motion", "cg")]


@pytest.mark.parametrize("task,method", PROX_CASES)
def test_prox_normal_equations(task, method):
    A = build(task)
    z = rand(2, *SHAPE, seed=12)
    y = A(rand(2, *SHAPE, seed=13))
    rho = torch.tensor([0.05, 2.0], dtype=torch.float64)  # per-image rho
    x = A.prox(z, y, rho, **({"method": method} if method else {}))
    r = rho.reshape(-1, 1, 1, 1)
    lhs, rhs = A.adjoint(A(x)) + r * x, A.adjoint(y) + r * z
    assert ((lhs - rhs).norm() / rhs.norm()) < 1e-4


@pytest.mark.parametrize("task", ["deblur_gaussian", "deblur_motion"])
def test_fft_prox_solves_the_circular_model(task):
    A = build(task, prox_method="fft")
    z, y, rho = rand(2, *SHAPE, seed=14), rand(2, *SHAPE, seed=15), 0.3
    x = A.prox(z, y, rho)
    lhs = A.adjoint_circular(A.forward_circular(x)) + rho * x
    rhs = A.adjoint_circular(y) + rho * z
    assert ((lhs - rhs).norm() / rhs.norm()) < 1e-8


def test_gaussian_kernel_facts():
    A = operators.get("deblur_gaussian")
    k = A.kernel[0]
    delta = np.zeros((61, 61))
    delta[30, 30] = 1
    torch.testing.assert_close(k, torch.from_numpy(scipy.ndimage.gaussian_filter(delta, 3.0)), rtol=0, atol=1e-15)
    torch.testing.assert_close(k, torch.outer(A.taps, A.taps))  # separable
    assert abs(float(k.sum()) - 1) < 1e-12
    rows, cols = torch.nonzero(k, as_tuple=True)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (18, 42, 18, 42)  # 25x25


@pytest.mark.parametrize("seed,draw,nonzeros,peak", [(0, 1, 149, 0.01725), (42, 1, 150, 0.01677), (42, 2, 37, 0.06694)])
def test_motion_kernels_match_reference_generator(seed, draw, nonzeros, peak):
    k = motion_kernel_from_seed(seed, 61, 0.5, draw=draw)
    assert k.shape == (61, 61) and int((k > 0).sum()) == nonzeros
    assert abs(float(k.max()) - peak) < 5e-6 and abs(float(k.sum()) - 1) < 1e-6


def test_motion_operator_uses_second_draw_and_global_rng_equivalence():
    A = operators.get("deblur_motion", seeds=[42])
    np.random.seed(42)
    motion_kernel(np.random.mtrand._rand)  # the global legacy RNG, as the reference uses it
    second = motion_kernel(np.random.mtrand._rand)
    assert np.array_equal(A.kernel[0].numpy(), second.astype(np.float64))
    assert np.array_equal(operators.get("deblur_motion", seeds=[42], kernel_draw=1).kernel[0].numpy(),
                          motion_kernel_from_seed(42, draw=1).astype(np.float64))


def test_random_mask_reference_draws_and_count():
    A = operators.get("inpaint_random", seeds=[7])
    assert int((A.mask == 0).sum()) == 52428 and A.mask.numel() == 65536
    np.random.seed(7)  # the DPS/SPGD code path with the global RNG
    prob = np.random.uniform(0.8, 0.8)
    removed = np.random.choice(65536, int(65536 * prob), replace=False)
    ref = np.ones(65536)
    ref[removed] = 0
    assert np.array_equal(A.mask[0, 0].numpy().reshape(-1), ref)
    assert np.array_equal(random_pixel_mask(np.random.RandomState(7), 256, 256, (0.8, 0.8)), ref.reshape(256, 256))


def test_box_positions():
    for position, lo, hi in [("dps", 16, 256 - 16 - 128), ("spgd", 32, 96)]:
        A = operators.get("inpaint_box", seeds=list(range(20)), position=position)
        holes = (A.mask[:, 0] == 0)
        assert int(holes[0].sum()) == 128 * 128
        tops = holes.any(2).float().argmax(1)
        lefts = holes.any(1).float().argmax(1)
        assert int(tops.min()) >= lo and int(tops.max()) < hi and int(lefts.min()) >= lo and int(lefts.max()) < hi
        np.random.seed(5)
        size = (np.random.randint(128, 129), np.random.randint(128, 129))
        t, l = np.random.randint(lo, hi), np.random.randint(lo, hi)
        B = operators.get("inpaint_box", seeds=[5], position=position)
        assert size == (128, 128) and bool((B.mask[0, 0, t:t + 128, l:l + 128] == 0).all())
    C = operators.get("inpaint_box", position="center")
    assert bool((C.mask[0, 0, 64:192, 64:192] == 0).all()) and int((C.mask == 0).sum()) == 128 * 128


def test_sr4_taps_match_spec():
    spec = [-0.001709, -0.010986, -0.018311, -0.011963, 0.022705, 0.097412, 0.181885, 0.240967,
            0.240967, 0.181885, 0.097412, 0.022705, -0.011963, -0.018311, -0.010986, -0.001709]
    torch.testing.assert_close(interior_taps(4), torch.tensor(spec, dtype=torch.float64), rtol=0, atol=5e-7)
    A = operators.get("sr4")
    assert A.rows.shape == (64, 256) and torch.allclose(A.rows.sum(1), torch.ones(64, dtype=torch.float64))
    assert A.rows[10, 34:50].tolist() == A.rows[20, 74:90].tolist()  # taps j = 4o-6 .. 4o+9


@pytest.mark.parametrize("task", ["deblur_gaussian", "deblur_motion"])
def test_blur_equals_scipy_mirror_correlation(task):
    A = operators.get(task, image_shape=(3, 64, 64), seeds=[1])
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    k = A.kernel[0].numpy()
    ref = np.stack([scipy.ndimage.correlate(x[0, c].double().numpy(), k, mode="mirror") for c in range(3)])
    assert np.abs(A(x)[0].numpy() - ref).max() < 1e-5


@pytest.mark.parametrize("task", ["inpaint_random", "inpaint_box", "deblur_motion"])
def test_batch_independence_and_select(task):
    seeds = [4, 8, 15]
    A = build(task, seeds=seeds)
    x = rand(3, *SHAPE, seed=16)
    y = A(x)
    for i, s in enumerate(seeds):
        torch.testing.assert_close(build(task, seeds=[s])(x[i:i + 1]), y[i:i + 1], rtol=0, atol=1e-12)
    idx = torch.arange(3).repeat_interleave(2)
    torch.testing.assert_close(A.select(idx)(x[idx]), y[idx], rtol=0, atol=1e-12)
    assert A.select([2]).seeds == [15]
    with pytest.raises(OperatorError, match="per-image parameters for 3 images"):
        A(x[:2])


@pytest.mark.parametrize("task", ["inpaint_random", "deblur_motion", "sr4", "phase_retrieval", "hdr"])
def test_select_works_for_every_operator(task):
    A = build(task, seeds=[1, 2])
    x = rand(2, *SHAPE, seed=17)
    idx = torch.tensor([1, 1, 0])
    torch.testing.assert_close(A.select(idx)(x[idx]), A(x)[idx])


@pytest.mark.parametrize("task,attr", [("inpaint_random", "mask"), ("inpaint_box", "mask"), ("deblur_motion", "kernel")])
def test_shared_params(task, attr):
    A = build(task, seeds=[9, 10, 11], shared_params=True)
    p = getattr(A, attr)
    assert p.shape[0] == 1 and torch.equal(p[0], getattr(build(task, seeds=[9]), attr)[0])
    x = rand(3, *SHAPE, seed=18)
    torch.testing.assert_close(A(x), build(task, seeds=[9])(x))  # broadcast over the batch


def test_bad_inputs_raise_operator_error():
    A = build("sr4")
    with pytest.raises(OperatorError, match="channels"):
        A(torch.zeros(1, 1, 32, 32))
    with pytest.raises(OperatorError, match="size"):
        A(torch.zeros(1, 3, 48, 48))
    with pytest.raises(OperatorError, match="available tasks: .*deblur_gaussian"):
        operators.get("deblur_foo")
    with pytest.raises(OperatorError, match="valid parameters: .*factor"):
        operators.get("sr4", scale=4)
    with pytest.raises(OperatorError, match="divisible"):
        operators.get("sr4", image_shape=(3, 30, 30))
    with pytest.raises(OperatorError, match="does not fit"):
        operators.get("inpaint_box", image_shape=(3, 64, 64))
    with pytest.raises(OperatorError, match="position rule"):
        operators.get("inpaint_box", position="middle")
    with pytest.raises(OperatorError, match="no SVD"):
        build("deblur_motion").svd
    assert not build("deblur_motion").has_svd and build("sr4").has_svd
    with pytest.raises(OperatorError, match="kernel_size must be >= 54"):
        build("deblur_motion", kernel_size=15)
    with pytest.raises(OperatorError, match="prox method"):
        build("deblur_motion", prox_method="svd")


def test_nonlinear_blur_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTOREBENCH_CHECKPOINTS", str(tmp_path))
    with pytest.raises(OperatorError, match="GOPRO_wVAE.pth.*blur-kernel-space-exploring"):
        operators.get("deblur_nonlinear")
    (tmp_path / "GOPRO_wVAE.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(OperatorError, match="could not read"):
        operators.get("deblur_nonlinear")


def test_measure_uses_gaussian_noise_per_image_streams():
    A = build("denoise", sigma_y=0.05)
    x = rand(2, *SHAPE, seed=19).float()
    y = A.measure(x, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    ref = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(y[1], x[1] + 0.05 * ref)
    assert A.describe()["noise_units"] == "[-1,1] pixel std" and A.describe()["sigma_y_on_0_1"] == 0.025
    assert "DDRM" in GaussianNoise.__module__ or "DDRM" in __import__("operators.noise").noise.__doc__


def test_phase_retrieval_and_hdr():
    x = rand(2, *SHAPE, seed=20)
    A = build("phase_retrieval")
    y = A(x)
    assert y.shape == (2, 3, 48, 48)  # pad floor(2/8 * 32) = 8 on each side
    torch.testing.assert_close((y ** 2).sum((2, 3)), (x ** 2).sum((2, 3)))  # orthonormal FFT: Parseval
    torch.testing.assert_close(build("phase_retrieval", variant="spgd")(x), A(x / 2 + 0.5))
    torch.testing.assert_close(build("hdr")(x), torch.clamp(2 * x, -1, 1))
    assert not A.is_linear and not build("hdr").is_linear


def test_motion_kernel_resize_is_the_area_mean_of_the_reference_kernel():
    ref = operators.get("deblur_motion", image_shape=(3, 64, 64), seeds=[7, 8]).kernel  # 61 x 61
    small = operators.get("deblur_motion", image_shape=(3, 16, 16), seeds=[7, 8], resize=9)
    assert small.kernel.shape == (2, 9, 9) and torch.allclose(small.kernel.sum((-2, -1)), torch.ones(2, dtype=torch.float64))
    # each output pixel is the mean of the 61/9-wide footprint it covers (adaptive average pooling), renormalised
    pooled = torch.nn.functional.adaptive_avg_pool2d(ref[:, None], 9)[:, 0]
    assert torch.allclose(small.kernel, pooled / pooled.sum((-2, -1), keepdim=True), atol=1e-12)
    assert "area-resampled to 9" in small.describe()["kernel"] and "kernel" not in operators.get(
        "deblur_motion", image_shape=(3, 64, 64), seeds=[7]).describe()
    x, y = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert torch.allclose((small.forward(x) * y).sum(), (x * small.adjoint(y)).sum())  # <A x, y> = <x, A^T y>
    with pytest.raises(operators.OperatorError, match="resize must be"):
        operators.get("deblur_motion", image_shape=(3, 16, 16), seeds=[7], resize=61)
    with pytest.raises(operators.OperatorError, match="reflection padding"):
        operators.get("deblur_motion", image_shape=(3, 16, 16), seeds=[7])  # the 61-px reference kernel does not fit
