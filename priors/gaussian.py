"""An exact Gaussian image prior: stationary, power-law spectrum, 3x3 colour covariance.

Model (all in [-1, 1] image units), for images of shape (C, H, W):

    x = mu + Sigma^{1/2} w,  w ~ N(0, I),   Sigma = C_colour (x) K,

with `mu` the per-channel mean, `C_colour` the C x C pixel colour covariance, and K the circulant
(periodic, stationary) spatial correlation that is diagonal in the 2-D DFT basis with spectrum

    S(f) = a / (f0^2 + |f|^2)^(gamma / 2),   |f| in cycles per image side,

where `a` normalises K to unit variance (mean of S over the H x W DFT grid = 1), so the per-pixel
covariance is exactly C_colour. With C_colour = U diag(lam) U^T, Sigma is diagonal in the basis
"colour eigenvector (x) Fourier mode" with eigenvalues d_{j,f} = lam_j S(f). Every quantity below is
exact (up to float rounding) because it is a diagonal filter in that basis:

* denoiser  D(x; sigma) = E[x0 | x0 + sigma n = x] = mu + Sigma (Sigma + sigma^2 I)^{-1} (x - mu),
  i.e. the filter d / (d + sigma^2); eps / x0 at DDPM index k follow from the schedule identities
  (`priors.base.ExactPrior`);
* prior samples  mu + Sigma^{1/2} w;
* the posterior of y = A x + sigma_y n for any linear operator A (only A.forward / A.adjoint used):
  mean = argmin ||y - A x||^2 / sigma_y^2 + (x - mu)^T Sigma^{-1} (x - mu), solved by conjugate
  gradients in the prior-whitened variable w (x = mu + Sigma^{1/2} w), system
  (I + Sigma^{1/2} A^T A Sigma^{1/2} / sigma_y^2) w = Sigma^{1/2} A^T (y - A mu) / sigma_y^2,
  preconditioned by the Fourier-diagonal approximation of A^T A (estimated from 4 seeded probes;
  it changes the speed, never the solution), stopped per image when the preconditioned residual
  <r, M r>^(1/2) <= tol <rhs, M rhs>^(1/2). CG runs in float64 whenever the operator accepts float64
  images (result cast back to y's dtype), with default tol 1e-6 (measured on 64x64 random
  inpainting, max abs pixel error vs a tol 1e-11 solve: 3e-4 at sigma_y = 0.05, 1e-2 at sigma_y = 0.01;
  tol 1e-7 gives 6e-5 / 4e-4 at about 1.5x the iterations), else in y's dtype with tol 1e-5.
  max_iter 2000; a warning names the images that did not converge. Cost, 3x256x256, one core:
  sr4 ~1 s, random inpainting / Gaussian deblur ~4 s, 128x128 box inpainting ~1 min (the slow case:
  the hole is filled by prior correlations alone). For the identity operator
  (task "denoise") the closed form mu + Sigma (Sigma + sigma_y^2 I)^{-1} (y - mu) is used.
  Exact posterior samples by perturbation-optimisation (Papandreou & Yuille 2010; Orieux et al. 2012):
  the same solve with mu replaced by a prior sample and y by y + sigma_y n'.

Fitting (`GaussianPrior.fit`, documented procedure):
1. images (N, C, H, W) in [-1, 1], resized (antialiased bilinear) to image_size if needed;
2. mu = mean pixel colour, C_colour = pixel colour covariance (over all pixels of all images);
3. decorrelate and whiten the colour: z_j = u_j^T (x - mu) / sqrt(lam_j);
4. periodogram of every channel of every image with a separable Hann window, normalised by the
   window energy (so white noise of variance 1 has flat spectrum 1); radial average over rings
   |f| in [r - 1/2, r + 1/2), r = 1 .. min(H, W)/2 (DC excluded), averaged over channels and images;
5. least squares in log-log: log P(r) = log a - (gamma/2) log(f0^2 + r^2), linear in (log a, gamma)
   for fixed f0, f0 chosen on a log grid in [0.05, min(H, W)/4] by smallest residual; ring r has
   weight 1/r in the squared residual, so that every octave of frequency counts equally;
6. discretisation at the target size: S evaluated on the integer DFT frequencies (cycles per image
   side) of the target grid and renormalised to mean 1 (pixel covariance stays C_colour).

Embedded default (`embedded(image_size)`, also `priors.load("gaussian")`): the numbers in
priors/gaussian_prior.json, written by `python -m priors.gaussian --fit`. Fitting set, disjoint from the
demo images (astronaut, coffee, chelsea, rocket), all shipped offline with scikit-image:
hubble_deep_field (NASA, public domain), immunohistochemistry (CMMI, "no known copyright
restrictions"), retina (Haggstrom 2014, CC0 1.0), stereo_motorcycle left view (Middlebury 2014 stereo,
Scharstein et al. GCPR 2014, redistributed in scikit-image, BSD-3-Clause package). From each image,
random square crops of side uniform in [128, 320] px (seeded), nearly flat crops (pixel std < 0.05,
e.g. retina background) rejected, resized with antialiasing to 64 x 64; f0 is in cycles per image
side of those 64 x 64 crops and is used unchanged at any target size (scale-invariance assumption).
"""
from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from priors.base import ExactPrior, _bcast, randn
from priors.schedule import VPSchedule

Tensor = torch.Tensor
Generators = torch.Generator | Sequence[torch.Generator] | None

EMBEDDED_JSON = Path(__file__).with_name("gaussian_prior.json")
FIT_IMAGES = ("hubble_deep_field", "immunohistochemistry", "retina", "stereo_motorcycle")


class GaussianPrior(ExactPrior):
    """Exact stationary Gaussian prior N(mu, C_colour (x) K) on (C, H, W) images, see module docstring."""

    name = "gaussian"

    def __init__(self, image_shape: tuple[int, int, int] = (3, 64, 64),
                 mean: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
                 colour_cov: Sequence[Sequence[float]] | Tensor | None = None,
                 f0: float = 1.0, gamma: float = 2.0, schedule: VPSchedule | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        super().__init__(image_shape, schedule)
        C, H, W = self.image_shape
        mean_t = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        cov = torch.eye(C, dtype=torch.float64) * 0.25 if colour_cov is None else \
            torch.as_tensor(colour_cov, dtype=torch.float64)
        if mean_t.shape != (C,) or cov.shape != (C, C):
            raise ValueError(f"mean must have {C} entries and colour_cov shape ({C}, {C}) for images "
                             f"{self.image_shape}; got {tuple(mean_t.shape)} and {tuple(cov.shape)}")
        if not torch.allclose(cov, cov.T, atol=1e-12):
            raise ValueError("colour_cov must be symmetric")
        lam, U = torch.linalg.eigh(cov)
        if lam.min() <= 0:
            raise ValueError(f"colour_cov must be positive definite (eigenvalues {lam.tolist()})")
        if f0 <= 0 or gamma < 0:
            raise ValueError(f"need f0 > 0 and gamma >= 0, got f0={f0}, gamma={gamma}")
        self.f0, self.gamma = float(f0), float(gamma)
        self.meta = dict(meta or {})
        full = self._spectrum_shape(torch.fft.fftfreq(W, 1.0 / W))
        self.a = float(1.0 / full.mean())
        spectrum = self.a * self._spectrum_shape(torch.fft.rfftfreq(W, 1.0 / W))
        self.register_buffer("mean", mean_t)
        self.register_buffer("colour_cov", cov)
        self.register_buffer("colour_eigvals", lam)
        self.register_buffer("colour_eigvecs", U)
        self.register_buffer("spectrum", spectrum)  # (H, W//2 + 1), mean 1 over the full grid
        self.register_buffer("variances", lam.view(C, 1, 1) * spectrum)  # eigenvalues d of Sigma

    def _spectrum_shape(self, fx: Tensor) -> Tensor:
        H = self.image_shape[1]
        fy = torch.fft.fftfreq(H, 1.0 / H).to(torch.float64)
        f2 = fy[:, None] ** 2 + fx.to(torch.float64)[None, :] ** 2
        return (self.f0**2 + f2) ** (-self.gamma / 2)

    # ------------------------------------------------------------------ diagonal-basis filters
    def _mu(self, like: Tensor) -> Tensor:
        return self.mean.to(device=like.device, dtype=like.dtype).view(1, -1, 1, 1)

    def apply_filter(self, v: Tensor, multiplier: Tensor) -> Tensor:
        """U (x) F^H diag(multiplier) F (x) U^T applied to centred images v (B, C, H, W).

        multiplier: (C, H, W//2+1) or (B, C, H, W//2+1), real, indexed like `variances`.
        """
        U = self.colour_eigvecs.to(device=v.device, dtype=v.dtype)
        z = torch.matmul(U.T, v.flatten(2)).view(v.shape)  # colour eigen-channels
        Z = torch.fft.rfft2(z) * multiplier.to(device=v.device, dtype=v.dtype)
        z = torch.fft.irfft2(Z, s=v.shape[-2:])
        return torch.matmul(U, z.flatten(2)).view(v.shape)

    def cov_apply(self, v: Tensor, power: float = 1.0) -> Tensor:
        """Sigma^power v for centred images v (power 1: covariance, 0.5: square root, -1: precision)."""
        return self.apply_filter(v, self.variances ** power)

    def _denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        d = self.variances.to(x.device)
        s2 = sigma.to(device=x.device, dtype=torch.float64).view(-1, 1, 1, 1) ** 2
        mu = self._mu(x)
        return mu + self.apply_filter(x - mu, d / (d + s2))

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, generator: Generators = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """n prior samples (n, C, H, W); a list of n generators gives sample i its own stream."""
        w = randn((n, *self.image_shape), generator, dtype=dtype, device=self.device)
        return self._mu(w) + self.cov_apply(w, 0.5)

    # ------------------------------------------------------------------ posterior
    def posterior_mean(self, y: Tensor, A: Any, *, sigma_y: float | None = None,
                       tol: float | None = None, max_iter: int = 2000) -> Tensor:
        """Exact E[x | y] for y = A x + sigma_y n (sigma_y defaults to A.sigma_y). Batched, per image."""
        mu = self._mu(y).expand(y.shape[0], *self.image_shape)
        return self._posterior_solve(y, A, mu, _noise_level(A, sigma_y), tol, max_iter)

    def posterior_sample(self, y: Tensor, A: Any, generator: Generators = None, *,
                         sigma_y: float | None = None, tol: float | None = None,
                         max_iter: int = 2000) -> Tensor:
        """One exact posterior sample per measurement (perturbation-optimisation).

        Image i draws, from generator i if a list is given, first its prior sample then its
        measurement perturbation."""
        s = _noise_level(A, sigma_y)
        B = y.shape[0]
        if generator is None or isinstance(generator, torch.Generator):
            w = randn((B, *self.image_shape), generator, dtype=y.dtype, device=y.device)
            n = randn(tuple(y.shape), generator, dtype=y.dtype, device=y.device)
        else:
            gens = list(generator)
            if len(gens) != B:
                raise ValueError(f"got {len(gens)} generators for a batch of {B}; pass one per image")
            w = torch.stack([randn(self.image_shape, g, dtype=y.dtype) for g in gens]).to(y.device)
            n = torch.stack([randn(tuple(y.shape[1:]), g, dtype=y.dtype) for g in gens]).to(y.device)
        x_prior = self._mu(w) + self.cov_apply(w, 0.5)
        return self._posterior_solve(y + s * n, A, x_prior, s, tol, max_iter)

    def posterior_covariance_apply(self, v: Tensor, A: Any, *, sigma_y: float | None = None,
                                   tol: float | None = None, max_iter: int = 2000) -> Tensor:
        """Sigma_post v for images v (B, C, H, W), Sigma_post = (Sigma^{-1} + A^T A / sigma_y^2)^{-1}: the
        posterior solve with y = 0 and centre Sigma v (its solution is Sigma_post Sigma^{-1} (Sigma v)).
        Unit vectors v = e_i give the exact per-pixel posterior variances (bench/posterior.py)."""
        with torch.no_grad():
            zeros = torch.zeros_like(A.forward(v))
        return self._posterior_solve(zeros, A, self.cov_apply(v), _noise_level(A, sigma_y), tol, max_iter)

    def _posterior_solve(self, y: Tensor, A: Any, centre: Tensor, s: float,
                         tol: float | None, max_iter: int) -> Tensor:
        """argmin_x ||y - A x||^2 / s^2 + (x - centre)^T Sigma^{-1} (x - centre)."""
        if not getattr(A, "is_linear", False):
            raise ValueError(f"the exact Gaussian posterior needs a linear operator; {getattr(A, 'name', A)!r} "
                             "is not linear (use a diffusion solver for this task)")
        self._check_input(centre)
        out_dtype = y.dtype
        with torch.no_grad():
            if _is_identity(A, centre):
                d = self.variances.to(y.device)
                return (centre + self.apply_filter(y - centre, d / (d + s**2))).to(out_dtype)
            work = _working_dtype(A, centre)
            y, centre = y.to(work), centre.to(work)
            tol = tol if tol is not None else (1e-6 if work == torch.float64 else 1e-5)
            half = lambda v: self.cov_apply(v, 0.5)  # noqa: E731
            rhs = half(A.adjoint(y - A.forward(centre))) / s**2
            normal = lambda w: w + half(A.adjoint(A.forward(half(w)))) / s**2  # noqa: E731
            d = self.variances.to(y.device)
            inv = 1.0 / (1.0 + d * _circulant_gram(A, centre) / s**2)  # (B, C, H, W//2+1)
            w, info = conjugate_gradient(normal, rhs, tol=tol, max_iter=max_iter,
                                         precondition=lambda v: self.apply_filter(v, inv))
            if not bool(info["converged"].all()):
                bad = torch.nonzero(~info["converged"]).flatten().tolist()
                warnings.warn(f"GaussianPrior posterior: CG did not reach tol={tol} in {max_iter} "
                              f"iterations for images {bad} (relative residuals "
                              f"{info['relative_residual'][bad].tolist()}); raise max_iter", RuntimeWarning)
            return (centre + half(w)).to(out_dtype)

    # ------------------------------------------------------------------ fitting / persistence
    @classmethod
    def fit(cls, images: Tensor, image_size: int | None = None, **kwargs: Any) -> "GaussianPrior":
        """Fit mean, colour covariance and (f0, gamma) to images (N, C, H, W) in [-1, 1] (module docstring)."""
        params = fit_parameters(images, image_size)
        C, H, W = params.pop("image_shape")
        return cls((C, H, W), **params, **kwargs)

    def parameters_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "colour_cov": self.colour_cov.tolist(),
                "f0": self.f0, "gamma": self.gamma, **self.meta}


def fit_parameters(images: Tensor, image_size: int | None = None) -> dict[str, Any]:
    """Steps 1-5 of the module docstring's fitting procedure; returns the constructor arguments."""
    if images.ndim != 4:
        raise ValueError(f"fit expects images (N, C, H, W) in [-1, 1], got shape {tuple(images.shape)}")
    x = images.to(torch.float64)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear",
                                            antialias=True, align_corners=False)
    N, C, H, W = x.shape
    pixels = x.permute(1, 0, 2, 3).reshape(C, -1)
    mean = pixels.mean(1)
    cov = torch.cov(pixels)
    lam, U = torch.linalg.eigh(cov)
    z = torch.einsum("ij,bihw->bjhw", U, x - mean.view(1, C, 1, 1)) / lam.sqrt().view(1, C, 1, 1)
    window = torch.hann_window(H, periodic=False, dtype=torch.float64)[:, None] * \
        torch.hann_window(W, periodic=False, dtype=torch.float64)[None, :]
    z = z - z.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(z * window).abs() ** 2 / (window**2).sum()
    power = power.mean(dim=(0, 1))  # average over images and channels, (H, W)
    fy = torch.fft.fftfreq(H, 1.0 / H).to(torch.float64)
    fx = torch.fft.fftfreq(W, 1.0 / W).to(torch.float64)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    rings = torch.arange(1, min(H, W) // 2 + 1, dtype=torch.float64)
    ring_power = torch.stack([power[(radius >= r - 0.5) & (radius < r + 0.5)].mean() for r in rings])
    log_p = torch.log(ring_power)
    weight = rings ** -0.5  # squared weight 1/r: every octave of frequency counts equally
    best = (math.inf, 1.0, 2.0, 1.0)
    for f0 in torch.logspace(math.log10(0.05), math.log10(min(H, W) / 4), 400, dtype=torch.float64):
        design = torch.stack([torch.ones_like(rings), -0.5 * torch.log(f0**2 + rings**2)], dim=1)
        coef = torch.linalg.lstsq(design * weight[:, None], (log_p * weight)[:, None]).solution[:, 0]
        resid = float((((design @ coef - log_p) * weight) ** 2).sum())
        if resid < best[0]:
            best = (resid, float(f0), float(coef[1]), float(coef[0].exp()))
    resid, f0, gamma, a = best
    return {"image_shape": (C, H, W), "mean": mean, "colour_cov": cov, "f0": f0, "gamma": gamma,
            "meta": {"fit_size": [H, W], "fit_images": N, "fit_a": a,
                     "fit_log_residual_rms": math.sqrt(resid / float((weight**2).sum()))}}


def embedded(image_size: int = 64) -> GaussianPrior:
    """The embedded default prior at image_size x image_size (no download; priors/gaussian_prior.json)."""
    if not EMBEDDED_JSON.is_file():
        raise FileNotFoundError(f"{EMBEDDED_JSON} is missing; regenerate it with `python -m priors.gaussian --fit`")
    p = json.loads(EMBEDDED_JSON.read_text())
    meta = {k: v for k, v in p.items() if k not in ("mean", "colour_cov", "f0", "gamma")}
    return GaussianPrior((len(p["mean"]), image_size, image_size), p["mean"], p["colour_cov"],
                         p["f0"], p["gamma"], meta=meta)


# ---------------------------------------------------------------------- linear algebra helpers
def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, tol: float = 1e-5, max_iter: int = 2000,
                       precondition: Callable[[Tensor], Tensor] | None = None
                       ) -> tuple[Tensor, dict[str, Tensor]]:
    """Solve apply(x) = b for an SPD `apply` (optionally preconditioned), batched per image.

    Image i stops (is frozen) as soon as its preconditioned residual <r_i, M r_i> <= tol^2 <b_i, M b_i>
    (M = precondition, identity if None), so its result never depends on the rest of the batch.
    Returns x and {"iterations", "converged", "relative_residual"} per image.
    """
    dims = tuple(range(1, b.ndim))
    dot = lambda u, v: (u * v).sum(dims)  # noqa: E731
    safe = lambda v, on: torch.where(on, v, torch.ones_like(v))  # noqa: E731
    M = precondition or (lambda v: v)
    x = torch.zeros_like(b)
    r = b.clone()
    z = M(r)
    p = z.clone()
    rz = dot(r, z)
    target = tol**2 * rz  # stop on the preconditioned residual <r, M r> (an error estimate when M ~ inverse)
    active = rz > target
    iterations = torch.zeros(b.shape[0], dtype=torch.long, device=b.device)
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        Ap = apply(p)
        alpha = torch.where(active, rz / safe(dot(p, Ap), active), torch.zeros_like(rz))
        x = x + _bcast(alpha, x) * p
        r = r - _bcast(alpha, r) * Ap
        z = M(r)
        rz_new = dot(r, z)
        beta = torch.where(active, rz_new / safe(rz, active), torch.zeros_like(rz))
        p = z + _bcast(beta, p) * p
        rz = torch.where(active, rz_new, rz)
        iterations += active.long()
        active = active & (rz > target)
    rel = torch.sqrt(rz / (target / tol**2).clamp_min(torch.finfo(b.dtype).tiny))
    return x, {"iterations": iterations, "converged": ~active, "relative_residual": rel}


def _noise_level(A: Any, sigma_y: float | None) -> float:
    s = float(A.sigma_y if sigma_y is None else sigma_y)
    if s <= 0:
        raise ValueError("the Gaussian posterior needs measurement noise sigma_y > 0 (with sigma_y = 0 it "
                         "is degenerate); build the operator with sigma_y > 0 or pass sigma_y=1e-3")
    return s


def _circulant_gram(A: Any, like: Tensor, probes: int = 4) -> Tensor:
    """Fourier-diagonal approximation of A^T A per image (for the CG preconditioner only).

    Estimates the Rayleigh quotients of the Fourier modes, lam_f ~ (F A^T A F^H)_ff, from a few seeded
    real Gaussian probes z: Re(conj(Fz)_f (F A^T A z)_f) / |Fz|^2_f averaged over probes and channels,
    then smoothed over the 3 x 3 neighbouring frequencies and clamped at 0. Exact for circulant
    operators up to probe noise; for masks it gives ~ the observed fraction. Returns (B, 1, H, W//2+1).
    """
    g = torch.Generator().manual_seed(1234)
    num = torch.zeros(like.shape[0], *like.shape[-2:], dtype=torch.float64)
    den = torch.zeros_like(num)
    for _ in range(probes):
        # the same probe for every image, so image i's preconditioner never depends on the batch
        z = torch.randn(like.shape[1:], generator=g, dtype=like.dtype).to(like.device).expand(like.shape)
        Fz = torch.fft.fft2(z).cpu().to(torch.complex128)
        FAz = torch.fft.fft2(A.adjoint(A.forward(z))).cpu().to(torch.complex128)
        num += (Fz.conj() * FAz).real.sum(1)
        den += (Fz.abs() ** 2).sum(1)
    lam = num / den
    lam = sum(torch.roll(lam, (i, j), dims=(-2, -1)) for i in (-1, 0, 1) for j in (-1, 0, 1)) / 9
    W = like.shape[-1]
    return lam[:, None, :, : W // 2 + 1].clamp_min(0).to(like.device)


def _working_dtype(A: Any, like: Tensor) -> torch.dtype:
    """float64 when the operator accepts float64 images (CG accuracy), else the images' dtype."""
    if like.dtype == torch.float64:
        return like.dtype
    try:
        probe = torch.zeros((1, *like.shape[1:]), dtype=torch.float64, device=like.device).expand(like.shape)
        ok = A.adjoint(A.forward(probe)).dtype == torch.float64
    except (RuntimeError, TypeError, ValueError):
        ok = False
    return torch.float64 if ok else like.dtype


def _is_identity(A: Any, like: Tensor) -> bool:
    if getattr(A, "name", "") != "denoise":
        return False
    probe = torch.randn(like.shape, dtype=like.dtype, generator=torch.Generator().manual_seed(0)).to(like.device)
    return torch.equal(A.forward(probe), probe)


# ---------------------------------------------------------------------- `python -m priors.gaussian --fit`
def load_fit_crops(size: int = 64, crops_per_image: int = 64, seed: int = 0) -> Tensor:
    """Random crops of the scikit-image fitting set (module docstring), (N, 3, size, size) in [-1, 1]."""
    import numpy as np
    import skimage.data

    rng = np.random.default_rng(seed)
    out = []
    for name in FIT_IMAGES:
        img = getattr(skimage.data, name)()
        img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle -> left view
        t = torch.from_numpy(np.ascontiguousarray(img[..., :3])).permute(2, 0, 1).to(torch.float64) / 127.5 - 1
        H, W = t.shape[-2:]
        kept = 0
        while kept < crops_per_image:
            side = int(rng.integers(128, min(320, H, W) + 1))
            top, left = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
            crop = t[:, top:top + side, left:left + side]
            if float(crop.std()) < 0.05:
                continue
            out.append(torch.nn.functional.interpolate(crop[None], size=(size, size), mode="bilinear",
                                                       antialias=True, align_corners=False)[0])
            kept += 1
    return torch.stack(out).clamp(-1, 1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fit the embedded Gaussian prior (priors/gaussian_prior.json)")
    parser.add_argument("--fit", action="store_true", help="fit on the scikit-image set and write the JSON")
    parser.add_argument("--out", type=Path, default=EMBEDDED_JSON)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--crops", type=int, default=64, help="crops per source image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.fit:
        parser.error("nothing to do; pass --fit")
    params = fit_parameters(load_fit_crops(args.size, args.crops, args.seed))
    record = {"mean": [round(v, 6) for v in params["mean"].tolist()],
              "colour_cov": [[round(v, 6) for v in row] for row in params["colour_cov"].tolist()],
              "f0": round(params["f0"], 6), "gamma": round(params["gamma"], 6),
              "frequency_unit": "cycles per image side of the fitting crops",
              "fit_size": args.size, "fit_images": list(FIT_IMAGES), "crops_per_image": args.crops,
              "crop_side_px": [128, 320], "seed": args.seed, "units": "[-1, 1] pixels",
              "fit_log_residual_rms": round(params["meta"]["fit_log_residual_rms"], 6),
              "made_by": "python -m priors.gaussian --fit"}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
