"""Blurs: depthwise cross-correlation with a K x K kernel after whole-sample reflection padding of K//2.

Spec solvers-baselines.md §2.2-2.3 (DPS `GaussialBlurOperator` / `MotionBlurOperator`; SPGD/DAPS the
same): out[i, j] = sum_{m, n} k[m, n] xpad[i + m, j + n] (no flip), reflection without repeating the
edge (index -1 -> 1), same-size output; equals `scipy.ndimage.correlate(x, k, mode='mirror')`.

* `deblur_gaussian`: 61x61 kernel, std 3.0, scipy `gaussian_filter` of a centred impulse (truncate 4
  -> 25x25 support). Separable: A(x)_c = H_1 X_c H_1^T with H_1 the reflect-padded 1-D correlation
  matrix -> matmuls for forward/adjoint and an SVD (operators/separable.py, DDRM threshold parameter).
* `deblur_motion`: 61x61 kernel, intensity 0.5 from operators/motion_kernel.py, one per image (from its
  seed) or shared; forward/adjoint by FFT of the reflect-padded image (exact: the FFT size exceeds
  H + K - 1, so no wrap-around). No SVD (not separable; DDRM's column is "-").
  `pinv` (for the Score-SDE / MCG projections x - A^+(A x - y_k), spec §8.1): the truncated-spectrum
  pseudo-inverse of the circular model A_c = `forward_circular`, whose singular values are |K(f)| (the
  DFT of the kernel wrapped onto H x W): A^+ y = F^-1[F y / conj(K)] on the frequencies with
  |K(f)| >= `pinv_threshold`, 0 elsewhere. Default threshold 3e-2, the same number as DDRM's SVD
  truncation (`DDRM_ZERO`; DDRM applies it to the 1-D factors of separable kernels, here it applies to
  the 2-D spectrum since a motion kernel has no separable SVD). It is the exact Moore-Penrose
  pseudo-inverse of A_c with the spectrum truncated; for the reflect-padded operator A it is an
  approximation (A and A_c differ within K//2 pixels of the borders), so A A^+ y != y even for y in
  the kept range, and the projection is idempotent only under the circular model: `pinv_forward` names
  that model for the projections (with the reflect-padded A, ||I - A_c^+ A|| is about 2 at 256x256 and
  3.9 at 32x32, so iterated projections diverge).

Prox methods (`prox_method=` at construction or `method=` per call):
* "fft": closed form under the **circular** approximation (DiffPIR, Zhao et al. 2016 with d = 1):
  x = F^-1[(O Y + rho Z) / (|O|^2 + rho)], O = DFT of the kernel centred at the origin (wrapped to
  H x W). It is the exact prox of the circular operator `forward_circular`, not of the reflect-padded one.
* "cg": the exact prox of the reflect-padded operator by conjugate gradients (PnP-ADMM, scico).
* "svd" (Gaussian only): the exact prox of the reflect-padded operator through its separable SVD.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.fft
import scipy.ndimage
import torch

from operators.base import LinearOperator, OperatorError, Tensor
from operators.linalg import expand_per_image
from operators.motion_kernel import MIN_SIZE, REFERENCE_DRAW, motion_kernel_from_seed
from operators.separable import DDRM_ZERO, SeparableOperator


SCIPY_FFT_ON_CPU = True  # scipy.fft (workers = torch threads) is about twice as fast as torch.fft on CPU


def _on_scipy(t: Tensor) -> bool:
    """scipy.fft for CPU tensors outside autograd: faster, and each image's transform is bit-identical whatever
    the batch size (a batched torch.fft may round differently), which keeps solvers batch-independent."""
    return t.device.type == "cpu" and SCIPY_FFT_ON_CPU and not (t.requires_grad and torch.is_grad_enabled())


def rfft2(t: Tensor, s: tuple[int, int] | None = None) -> Tensor:
    """Real 2-D FFT over the last two axes, zero-padded to `s` (scipy on CPU, see `_on_scipy`)."""
    if _on_scipy(t):
        return torch.from_numpy(scipy.fft.rfft2(t.detach().numpy(), s=s, workers=max(1, torch.get_num_threads())))
    return torch.fft.rfft2(t, s=s)


def irfft2(f: Tensor, s: tuple[int, int]) -> Tensor:
    """Inverse of `rfft2` onto the real grid `s`."""
    if _on_scipy(f):
        return torch.from_numpy(scipy.fft.irfft2(f.detach().numpy(), s=s, workers=max(1, torch.get_num_threads())))
    return torch.fft.irfft2(f, s=s)


def _fft_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (fast FFT length)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def reflect_pad_adjoint(z: Tensor, pad: int, inplace: bool = False) -> Tensor:
    """Adjoint of whole-sample reflection padding by `pad` on the last two axes (folds the borders back).

    z: (..., H + 2 pad, W + 2 pad) -> (..., H, W). Padded index q < pad holds original index pad - q and
    q = pad + n + j holds n - 2 - j, so the strips are added (flipped) onto the interior; `inplace`
    lets it reuse z's memory for that (z is then overwritten).
    """
    z = z if inplace else z.clone()
    for dim in (-1, -2):
        n = z.shape[dim] - 2 * pad
        z.narrow(dim, pad + 1, pad).add_(z.narrow(dim, 0, pad).flip(dim))
        z.narrow(dim, n - 1, pad).add_(z.narrow(dim, pad + n, pad).flip(dim))
    h, w = z.shape[-2] - 2 * pad, z.shape[-1] - 2 * pad
    return z[..., pad:pad + h, pad:pad + w].contiguous()


def reflect_pad_into(x: Tensor, pad: int, size: tuple[int, int], buf: Tensor | None = None) -> Tensor:
    """Whole-sample reflection padding by `pad` written into a zero (..., size) buffer (one copy).

    Same values as F.pad(x, (pad,) * 4, mode="reflect") in [:H + 2 pad, :W + 2 pad], zeros beyond
    (the FFT grid), without a second copy for the zero padding. `buf` (zero outside that region,
    e.g. from an earlier call) is reused when given: fresh 20 MB allocations cost page faults.
    """
    h, w = x.shape[-2:]
    buf = x.new_zeros(*x.shape[:-2], *size) if buf is None else buf
    buf[..., pad:pad + h, pad:pad + w] = x
    buf[..., pad:pad + h, :pad] = x[..., :, 1:pad + 1].flip(-1)
    buf[..., pad:pad + h, pad + w:2 * pad + w] = x[..., :, w - 1 - pad:w - 1].flip(-1)
    buf[..., :pad, : w + 2 * pad] = buf[..., pad + 1:2 * pad + 1, : w + 2 * pad].flip(-2)
    buf[..., pad + h:2 * pad + h, : w + 2 * pad] = buf[..., h - 1:h - 1 + pad, : w + 2 * pad].flip(-2)
    return buf


def reflection_matrix(n: int, taps: Tensor) -> Tensor:
    """(n, n) matrix of 1-D correlation with `taps` (odd length) after whole-sample reflection padding."""
    half = taps.numel() // 2
    rows = torch.arange(n)[:, None].expand(n, taps.numel())
    src = rows + torch.arange(taps.numel())[None] - half
    src = torch.where(src < 0, -src, src)
    src = torch.where(src > n - 1, 2 * (n - 1) - src, src)
    out = torch.zeros(n, n, dtype=torch.float64)
    out.index_put_((rows.reshape(-1), src.reshape(-1)), taps.to(torch.float64).repeat(n), accumulate=True)
    return out


def gaussian_taps(kernel_size: int = 61, std: float = 3.0) -> Tensor:
    """1-D taps g (kernel_size,): scipy `gaussian_filter1d` of a centred impulse (truncate 4, sum 1)."""
    impulse = np.zeros(kernel_size)
    impulse[kernel_size // 2] = 1
    return torch.from_numpy(scipy.ndimage.gaussian_filter1d(impulse, std))


class _Correlate(torch.autograd.Function):
    """A(x) with A^T as its backward (the FFT may run outside torch)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, op: "KernelBlur") -> Tensor:
        ctx.op = op
        return op._correlate(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return _CorrelateAdjoint.apply(grad, ctx.op), None


class _CorrelateAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y: Tensor, op: "KernelBlur") -> Tensor:
        ctx.op = op
        return op._correlate_adjoint(y)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return _Correlate.apply(grad, ctx.op), None


class KernelBlur(LinearOperator):
    """Reflect-padded depthwise correlation with per-image kernels `kernel` (P, K, K), by FFT."""

    batched_params = ("kernel",)
    param_caches = ("kernel_fft", "otf", "pinv_spectrum")
    batch_caches = ("pad_buffer",)
    prox_methods: tuple[str, ...] = ("fft", "cg")
    kernel: Tensor

    def _check_geometry(self, kernel_size: int) -> None:
        _, h, w = self.image_shape
        if kernel_size % 2 != 1 or kernel_size < 1:
            raise OperatorError(f"{self.name}: kernel_size must be odd and positive, got {kernel_size}")
        if kernel_size // 2 >= min(h, w):
            raise OperatorError(f"{self.name}: reflection padding {kernel_size // 2} needs images larger than "
                                f"{kernel_size // 2} pixels, got {h}x{w}; use a smaller kernel_size")

    def _set_prox_method(self, method: str) -> None:
        if method not in self.prox_methods:
            raise OperatorError(f"{self.name}: unknown prox method {method!r}; valid: {', '.join(self.prox_methods)}")
        self.prox_method = method

    @property
    def pad(self) -> int:
        return self.kernel.shape[-1] // 2

    def _grid(self) -> tuple[int, int]:
        _, h, w = self.image_shape
        return _fft_size(h + 2 * self.pad), _fft_size(w + 2 * self.pad)

    def _spectrum(self, like: Tensor, conj: bool) -> Tensor:
        """rfft2 of the kernel on the padded FFT grid, (P, 1, Nh, Nw//2+1) (conjugated for correlation)."""
        key = ("kernel_fft", conj, like.dtype, like.device)
        if key not in self._cache:
            spec = torch.fft.rfft2(self.param("kernel", like), s=self._grid())[:, None]
            self._cache[key] = spec.conj().resolve_conj() if conj else spec
        return self._cache[key]

    def _filter(self, t: Tensor, conj: bool) -> Tensor:
        """irfft2(rfft2(t) * K) on the padded FFT grid (K conjugated for correlation)."""
        grid = self._grid()
        freq = rfft2(t.detach(), s=grid)  # (inside the autograd Functions: no graph; no-op padding on the grid)
        freq *= self._spectrum(t, conj)
        return irfft2(freq, s=grid)

    def _correlate(self, x: Tensor) -> Tensor:
        _, h, w = self.image_shape
        key = ("pad_buffer", tuple(x.shape), x.dtype, x.device)  # reused: only its padded region is written
        padded = reflect_pad_into(x, self.pad, self._grid(), self._cache.get(key))
        self._cache[key] = padded
        return self._filter(padded, conj=True)[..., :h, :w].contiguous()

    def _correlate_adjoint(self, y: Tensor) -> Tensor:
        _, h, w = self.image_shape
        full = self._filter(y, conj=False)[..., : h + 2 * self.pad, : w + 2 * self.pad]
        return reflect_pad_adjoint(full, self.pad, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return _Correlate.apply(x, self)

    def adjoint(self, y: Tensor) -> Tensor:
        self.check_input(y)
        return _CorrelateAdjoint.apply(y, self)

    # --- circular model (the "fft" prox) -----------------------------------------------------------
    def _otf(self, like: Tensor) -> Tensor:
        """DFT of the kernel centred at the origin and wrapped onto H x W, (P, 1, H, W//2+1), in `like`'s
        complex dtype: `_otf_float64` rounded once, so every image's OTF is the same whatever the batch."""
        key = ("otf", like.dtype, like.device)
        if key not in self._cache:
            complex_dtype = torch.complex128 if like.dtype == torch.float64 else torch.complex64
            self._cache[key] = torch.from_numpy(self._otf_float64()).to(device=like.device, dtype=complex_dtype)
        return self._cache[key]

    def _otf_float64(self) -> np.ndarray:
        """`_otf` in float64, kernel by kernel (bit-identical whatever the number of kernels P)."""
        _, h, w = self.image_shape
        out = []
        for k in self.kernel.to(torch.float64).numpy():
            size = k.shape[-1]
            wrapped = np.zeros((h, w))
            rows = (np.arange(size) - size // 2) % h
            cols = (np.arange(size) - size // 2) % w
            np.add.at(wrapped, (rows[:, None], cols[None, :]), k)
            out.append(scipy.fft.rfft2(wrapped))
        return np.stack(out)[:, None]

    def forward_circular(self, x: Tensor) -> Tensor:
        """The circular approximation: correlation with periodic boundary (what the "fft" prox inverts)."""
        self.check_input(x)
        return irfft2(rfft2(x) * self._otf(x).conj(), s=x.shape[-2:])

    def adjoint_circular(self, y: Tensor) -> Tensor:
        self.check_input(y)
        return irfft2(rfft2(y) * self._otf(y), s=y.shape[-2:])

    def pinv_circular(self, y: Tensor, threshold: float) -> Tensor:
        """Truncated-spectrum pseudo-inverse of the circular model: F^-1[M / conj(O) F y].

        The circular operator is A_c = F^-1 diag(conj(O)) F, so its singular values are |O(f)|; M keeps
        the frequencies with |O(f)| >= threshold (the others count as zero singular values). This is
        the exact Moore-Penrose pseudo-inverse of A_c with those singular values truncated.
        """
        self.check_input(y)
        key = ("pinv_spectrum", float(threshold), y.dtype, y.device)
        if key not in self._cache:
            otf = self._otf_float64()
            keep = np.abs(otf) >= threshold
            inv = np.where(keep, 1 / np.where(keep, otf.conj(), 1), 0)
            complex_dtype = torch.complex128 if y.dtype == torch.float64 else torch.complex64
            self._cache[key] = torch.from_numpy(inv).to(device=y.device, dtype=complex_dtype)
        return irfft2(rfft2(y) * self._cache[key], s=y.shape[-2:]).to(y.dtype)

    def prox_fft(self, z: Tensor, y: Tensor, rho: float | Tensor) -> Tensor:
        """Closed-form prox of the circular model: F^-1[(O Y + rho Z) / (|O|^2 + rho)]."""
        self.check_input(z)
        otf = self._otf(z)
        r = expand_per_image(rho, z)
        num = otf * rfft2(y) + r * rfft2(z)
        return irfft2(num / (otf.abs() ** 2 + r), s=z.shape[-2:])

    def prox(self, z: Tensor, y: Tensor, rho: float | Tensor, method: str | None = None, **kwargs: Any) -> Tensor:
        """argmin ||y - A x||^2 + rho ||x - z||^2; method "fft" (circular approximation) or "cg" (exact)."""
        method = method or self.prox_method
        if method == "fft":
            return self.prox_fft(z, y, rho)
        if method == "cg":
            return self.prox_cg(z, y, rho, **{"x0": self.prox_fft(z, y, rho), **kwargs})
        raise OperatorError(f"{self.name}: unknown prox method {method!r}; valid: {', '.join(self.prox_methods)}")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "kernel_size": int(self.kernel.shape[-1]), "padding": "reflect (whole-sample)",
                "application": "cross-correlation", "prox_method": self.prox_method}


class DeblurMotion(KernelBlur):
    """`deblur_motion`: per-image random motion kernels (LeviBorodenko generator), reflect-padded correlation.

    kernel_draw: which kernel after seeding is used (1-based). The reference operator uses the 2nd
    (default); DiffPIR-style "kernel right after the seed" is kernel_draw=1.
    resize: None (the reference operator) or an odd size N: the reference kernel (kernel_size >= 54, so that its
    line is drawn at all) is area-resampled to N x N and renormalised to sum 1. For images too small to be
    reflect-padded by a >= 54-pixel kernel (the 16x16 posterior tables, bench/protocols/posterior-gaussian.yaml);
    not the operator of any paper, and named in `describe()` whenever it is used.
    """

    name = "deblur_motion"

    def __init__(self, image_shape: Sequence[int] = (3, 256, 256), sigma_y: float = 0.0,
                 seeds: Sequence[int] | None = None, shared_params: bool = False,
                 kernel_size: int = 61, intensity: float = 0.5, kernel_draw: int = REFERENCE_DRAW,
                 prox_method: str = "fft", pinv_threshold: float = DDRM_ZERO, resize: int | None = None) -> None:
        super().__init__(image_shape, sigma_y, seeds, shared_params)
        if resize is not None and not (isinstance(resize, int) and 1 <= resize < kernel_size):
            raise OperatorError(f"{self.name}: resize must be an odd kernel size below kernel_size {kernel_size} "
                                f"(or null for the reference kernel), got {resize!r}")
        self._check_geometry(kernel_size if resize is None else resize)
        if pinv_threshold <= 0:
            raise OperatorError(f"{self.name}: pinv_threshold must be > 0 (singular values |K(f)| below it are "
                                f"treated as zero; DDRM's 3e-2 by default), got {pinv_threshold}")
        self.pinv_threshold = float(pinv_threshold)
        if kernel_size < MIN_SIZE:
            raise OperatorError(f"{self.name}: kernel_size must be >= {MIN_SIZE} (the reference generator draws "
                                f"a line of width floor(diag/150), 0 below that), got {kernel_size}")
        if not 0 <= intensity <= 1:
            raise OperatorError(f"{self.name}: intensity must be in [0, 1], got {intensity}")
        if int(kernel_draw) < 1:
            raise OperatorError(f"{self.name}: kernel_draw is 1-based (the reference uses 2), got {kernel_draw}")
        self._set_prox_method(prox_method)
        self.intensity, self.kernel_draw = float(intensity), int(kernel_draw)
        kernels = [motion_kernel_from_seed(s, kernel_size, self.intensity, self.kernel_draw) for s in self.param_seeds]
        kernel = torch.from_numpy(np.stack(kernels)).to(torch.float64)
        if resize is not None:  # area resampling (mean over each output pixel's footprint), then sum 1
            kernel = torch.nn.functional.interpolate(kernel[:, None], size=(resize, resize), mode="area")[:, 0]
            kernel = kernel / kernel.sum((-2, -1), keepdim=True)
        self.resize, self._drawn_size = resize, kernel_size
        self.kernel = kernel

    def pinv(self, y: Tensor) -> Tensor:
        """Truncated-spectrum pseudo-inverse of the circular model (`pinv_circular` at `pinv_threshold`).

        Exact (Moore-Penrose, truncated spectrum) for `forward_circular`; an approximation for the
        reflect-padded `forward`, which differs from the circular model within K//2 of the borders.
        """
        return self.pinv_circular(y, self.pinv_threshold)

    def pinv_forward(self, x: Tensor) -> Tensor:
        """The model `pinv` is the exact pseudo-inverse of (the circular one): projections x - A^+(A x - y)
        use it for A x so that they stay orthogonal projections (solvers/ddpm_steps.py)."""
        return self.forward_circular(x)

    @property
    def svd(self):  # type: ignore[override]
        raise OperatorError(f"{self.name}: motion-blur kernels are not separable, so this operator has no SVD "
                            "(DDRM-type solvers cannot run it; SPGD Table 1 has '-' there)")

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "intensity": self.intensity, "kernel_draw": self.kernel_draw,
               "pinv": "truncated spectrum of the circular model", "pinv_threshold": self.pinv_threshold}
        if self.resize is not None:
            out["kernel"] = f"reference {self._drawn_size}x{self._drawn_size} kernel area-resampled to {self.resize}"
        return out


class DeblurGaussian(SeparableOperator, KernelBlur):
    """`deblur_gaussian`: 61x61 Gaussian (std 3.0, scipy truncation at 4 std), reflect-padded correlation.

    Forward/adjoint via the separable matrices (same operator as the FFT path, to float precision).
    prox methods: "fft" (circular, default), "svd" (exact), "cg" (exact). svd_threshold: DDRM's 3e-2.
    """

    name = "deblur_gaussian"
    batched_params = ()
    prox_methods = ("fft", "svd", "cg")

    def __init__(self, image_shape: Sequence[int] = (3, 256, 256), sigma_y: float = 0.0,
                 seeds: Sequence[int] | None = None, shared_params: bool = False,
                 kernel_size: int = 61, std: float = 3.0, svd_threshold: float = DDRM_ZERO,
                 prox_method: str = "fft") -> None:
        LinearOperator.__init__(self, image_shape, sigma_y, seeds, shared_params)
        self._check_geometry(kernel_size)
        if std <= 0:
            raise OperatorError(f"{self.name}: std must be > 0, got {std}")
        self._set_prox_method(prox_method)
        self.std, self.svd_threshold = float(std), float(svd_threshold)
        self.taps = gaussian_taps(kernel_size, self.std)
        self.kernel = torch.outer(self.taps, self.taps)[None]
        _, h, w = self.image_shape
        self.rows, self.cols = reflection_matrix(h, self.taps), reflection_matrix(w, self.taps)

    forward = SeparableOperator.forward
    adjoint = SeparableOperator.adjoint

    def prox(self, z: Tensor, y: Tensor, rho: float | Tensor, method: str | None = None, **kwargs: Any) -> Tensor:
        method = method or self.prox_method
        if method == "fft":
            return self.prox_fft(z, y, rho)
        return SeparableOperator.prox(self, z, y, rho, method=method, **kwargs)

    def describe(self) -> dict[str, Any]:
        return {**KernelBlur.describe(self), "std": self.std, "svd_threshold": self.svd_threshold}
