"""The `Operator` interface and the task registry (design.md "Operator").

An operator is built for one batch: `operators.get(task, image_shape=(3, H, W), seeds=[s_1..s_B],
sigma_y=0.05, **params)`. Each image's random parameters (mask, kernel, box position) are drawn from
its own seed with a local `numpy.random.RandomState(seed)` (draw-for-draw the same as seeding numpy's
global legacy RNG, which the reference repositories use), so image i's measurement never depends on
what else is in the batch. With `shared_params=True` (the SPGD/DAPS protocol: one mask / kernel for
the whole run) every image uses the parameters drawn from `seeds[0]`. Without `seeds` the parameters
come from seed 0 and are shared by every image.

Per-image parameters are tensors with a leading dimension P: P = 1 (shared, broadcast over any batch)
or P = B (one per image; then the batch must have B images). `select(idx)` indexes them.

Measurement noise: y = A(x) + sigma_y n with sigma_y in [-1, 1] pixel units (the DPS/SPGD
convention; see operators/noise.py for what other repos mean by "0.05"). `measure` uses
`operators.noise.GaussianNoise`. Solvers read `A.sigma_y` and convert it in one documented place.

Subclasses register themselves by defining a class attribute `name` (a task name) and implement
`forward`; linear operators also `adjoint` and, where a closed form exists, `pinv`, `prox`, `svd`.
`LinearOperator.prox` falls back to conjugate gradients (operators/linalg.py).
"""
from __future__ import annotations

import copy
import inspect
from typing import Any, ClassVar, Sequence

import torch

from operators.linalg import cg_prox, expand_per_image
from operators.noise import GaussianNoise, randn_per_image

Tensor = torch.Tensor

_REGISTRY: dict[str, type["Operator"]] = {}

__all__ = ["Operator", "LinearOperator", "SVD", "OperatorError", "get", "names", "parameters", "randn_per_image"]


class OperatorError(ValueError):
    """Bad operator input (unknown task, parameter, image size or channel count)."""


class Operator:
    """Base class: a batched degradation operator with per-image parameters."""

    name: ClassVar[str] = ""
    is_linear: ClassVar[bool] = False
    #: attributes holding per-image parameters with a leading dimension P (1 = shared, or B)
    batched_params: ClassVar[tuple[str, ...]] = ()
    #: `_cache` entries (by key[0]) holding tensors derived from the per-image parameters, leading
    #: dimension P (e.g. a kernel's FFT); `repeat_interleave` repeats them where they are
    param_caches: ClassVar[tuple[str, ...]] = ()
    #: `_cache` entries (by key[0]) shaped for one batch size (work buffers); never shared
    batch_caches: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            _REGISTRY[cls.name] = cls

    def __init__(self, image_shape: Sequence[int] = (3, 256, 256), sigma_y: float = 0.0,
                 seeds: Sequence[int] | None = None, shared_params: bool = False) -> None:
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise OperatorError(f"{self.name}: image_shape must be (C, H, W) with positive sizes, got {image_shape}")
        self.image_shape = shape
        self.sigma_y = float(sigma_y)
        if self.sigma_y < 0:
            raise OperatorError(f"{self.name}: sigma_y must be >= 0, got {sigma_y}")
        self.seeds = None if seeds is None else [int(s) for s in seeds]
        if self.seeds is not None and not self.seeds:
            raise OperatorError(f"{self.name}: seeds must list one seed per image, got an empty list")
        self.shared_params = bool(shared_params)
        self._cache: dict[Any, Any] = {}

    # --- to implement ---------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Every parameter that decides the measurement, for records and table footers."""
        return {"task": self.name, "image_shape": list(self.image_shape), **self.noise.describe(),
                "seeds": self.seeds, "shared_params": self.shared_params}

    # --- per-image parameters -------------------------------------------------------------------
    @property
    def param_seeds(self) -> list[int]:
        """The seeds the parameters are drawn from: one per image, or [seeds[0]] when shared."""
        if self.seeds is None:
            return [0]
        return self.seeds[:1] if self.shared_params else list(self.seeds)

    @property
    def n_params(self) -> int:
        """P: 1 when the parameters are shared (broadcast over any batch), else the batch size."""
        for attr in self.batched_params:
            return int(getattr(self, attr).shape[0])
        return 1

    def select(self, idx: Sequence[int] | Tensor) -> "Operator":
        """The operator for batch indices idx (repeats allowed: DPPS candidates, sub-batches)."""
        index = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        new = copy.copy(self)
        new._cache = {}
        p = self.n_params
        if p > 1:
            if index.numel() and (int(index.min()) < -p or int(index.max()) >= p):
                raise OperatorError(f"{self.name}: select index out of range for {p} per-image parameter sets")
            for attr in self.batched_params:
                setattr(new, attr, getattr(self, attr)[index])
        if self.seeds is not None and not self.shared_params and len(self.seeds) > 1:
            if all(-len(self.seeds) <= int(i) < len(self.seeds) for i in index):
                new.seeds = [self.seeds[int(i)] for i in index]
        return new

    def repeat_interleave(self, n: int) -> "Operator":
        """The operator for a batch in which image i of this batch appears n times in a row (DPPS's
        candidates): the same operator as `select(arange(B).repeat_interleave(n))`, but the device copies
        of the per-image parameters and the transforms cached from them (a kernel's FFT) are repeated on
        their device, so nothing is copied from the host or recomputed. Shared parameters (P = 1) share
        the cache outright."""
        if n < 1:
            raise OperatorError(f"{self.name}: repeat_interleave needs n >= 1, got {n}")
        new = copy.copy(self)
        p = self.n_params
        keep = set(self.batched_params) | set(self.param_caches)
        if p == 1:
            new._cache = {k: v for k, v in self._cache.items() if _cache_kind(k) not in self.batch_caches}
        else:
            for attr in self.batched_params:
                setattr(new, attr, getattr(self, attr).repeat_interleave(n, dim=0))
            new._cache = {k: v.repeat_interleave(n, dim=0) for k, v in self._cache.items()
                          if _cache_kind(k) in keep and isinstance(v, Tensor) and v.shape[:1] == (p,)}
        if self.seeds is not None and not self.shared_params and len(self.seeds) > 1:
            new.seeds = [s for s in self.seeds for _ in range(n)]
        return new

    def param(self, attr: str, like: Tensor) -> Tensor:
        """A (cached) copy of parameter tensor `attr` in `like`'s dtype and device."""
        key = (attr, like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = getattr(self, attr).to(dtype=like.dtype, device=like.device)
        return self._cache[key]

    # --- shared ---------------------------------------------------------------------------------
    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    @property
    def noise(self) -> GaussianNoise:
        """The measurement noise model (sigma_y in [-1, 1] pixel units)."""
        return GaussianNoise(self.sigma_y)

    def measure(self, x: Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Tensor:
        """y = A(x) + sigma_y n. A list of generators gives each image its own noise stream."""
        return self.noise(self.forward(x), generator)

    def check_input(self, x: Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise OperatorError(f"{self.name}: expected a batch (B, C, H, W), got {shape}")
        if x.shape[1] != self.image_shape[0]:
            raise OperatorError(
                f"{self.name}: built for {self.image_shape[0]} channels, got {x.shape[1]} channels "
                f"(input shape {tuple(x.shape)}); build the operator with image_shape={tuple(x.shape[1:])}")
        if tuple(x.shape[1:]) != self.image_shape:
            raise OperatorError(
                f"{self.name}: built for images of size {self.image_shape[1]}x{self.image_shape[2]}, got "
                f"{x.shape[2]}x{x.shape[3]}; build the operator with image_shape={tuple(x.shape[1:])} or resize the images")
        self.check_batch(x.shape[0])

    def check_batch(self, batch: int) -> None:
        p = self.n_params
        if p > 1 and batch != p:
            raise OperatorError(
                f"{self.name}: the operator holds per-image parameters for {p} images but got a batch of {batch}; "
                f"use A.select(indices) for sub-batches or repeats")


def _cache_kind(key: Any) -> Any:
    return key[0] if isinstance(key, tuple) and key else key


class LinearOperator(Operator):
    """A linear operator: adjoint always; pinv / prox / svd where available."""

    is_linear: ClassVar[bool] = True

    def adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def pinv(self, y: Tensor) -> Tensor:
        raise OperatorError(f"{self.name}: no closed-form pseudo-inverse")

    def prox(self, z: Tensor, y: Tensor, rho: float | Tensor, **kwargs: Any) -> Tensor:
        """argmin_x ||y - A x||^2 + rho ||x - z||^2 (rho scalar or per image, shape (B,)).

        Default: conjugate gradients on (A^T A + rho I) x = A^T y + rho z (kwargs: tol, max_iter, x0).
        """
        return self.prox_cg(z, y, rho, **kwargs)

    def prox_cg(self, z: Tensor, y: Tensor, rho: float | Tensor, tol: float = 1e-6, max_iter: int = 200,
                x0: Tensor | None = None) -> Tensor:
        """The exact prox by conjugate gradients (per image), for any linear operator."""
        return cg_prox(self.forward, self.adjoint, z, y, rho, x0=x0, tol=tol, max_iter=max_iter)

    @property
    def svd(self) -> "SVD":
        raise OperatorError(f"{self.name}: this operator has no SVD (use a solver that does not need one)")

    @property
    def has_svd(self) -> bool:
        try:
            self.svd
        except OperatorError:
            return False
        return True


class SVD:
    """A = U diag(s) V^T in the form DDRM-type solvers need (DDRM `H_functions`).

    Vectors are images (B, C, H, W) on the input side; spectral vectors are flattened (B, n) with
    n = C*H*W, singular values (B, n) sorted so that the first `rank` are the nonzero ones
    (padded with zeros up to n). `U`/`Ut` act on the measurement space flattened to (B, m), m <= n;
    spectral index i < m pairs column i of U with column i of V.

    Subclasses set `n`, `m` and implement the five maps; `singulars()` is float64 and may return (1, n)
    when the parameters are shared by the batch (it broadcasts; pass `batch` to expand). `rank`: (P,). The generic `A`,
    `At`, `pinv` and `prox` below are written in spectral coordinates and work for every subclass.
    """

    n: int
    m: int

    def V(self, v: Tensor) -> Tensor: ...  # (B, n) -> (B, C, H, W)
    def Vt(self, x: Tensor) -> Tensor: ...  # (B, C, H, W) -> (B, n)
    def U(self, u: Tensor) -> Tensor: ...  # (B, m) -> y-shaped
    def Ut(self, y: Tensor) -> Tensor: ...  # y-shaped -> (B, m)
    def singulars(self, batch: int | None = None) -> Tensor: ...  # (B, n) with zeros past the rank

    @property
    def rank(self) -> Tensor:
        """Number of nonzero singular values, per parameter set (P,)."""
        return (self.singulars() > 0).sum(1)

    def _s(self, like: Tensor) -> Tensor:
        """`singulars()` in like's dtype on like's device, converted once per (dtype, device) and cached."""
        cache = self.__dict__.setdefault("_singulars_on", {})
        key = (like.dtype, like.device)
        if key not in cache:
            cache[key] = self.singulars().to(dtype=like.dtype, device=like.device)
        return cache[key]

    def A(self, x: Tensor) -> Tensor:
        """U S V^T x."""
        s = self._s(x)
        return self.U((s * self.Vt(x))[:, : self.m])

    def At(self, y: Tensor) -> Tensor:
        """V S U^T y."""
        u = self.Ut(y)
        s = self._s(u)
        return self.V(torch.nn.functional.pad(s[:, : self.m] * u, (0, self.n - self.m)))

    def pinv(self, y: Tensor) -> Tensor:
        """V S^+ U^T y (singular values below the threshold count as zero)."""
        u = self.Ut(y)
        s = self._s(u)[:, : self.m]
        inv = torch.where(s > 0, 1 / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))
        return self.V(torch.nn.functional.pad(inv * u, (0, self.n - self.m)))

    def prox(self, z: Tensor, y: Tensor, rho: float | Tensor) -> Tensor:
        """argmin_x ||y - U S V^T x||^2 + rho ||x - z||^2 = V (S^2 + rho)^-1 (S U^T y + rho V^T z)."""
        vz = self.Vt(z)
        s = self._s(vz)
        r = expand_per_image(rho, vz)
        sy = torch.nn.functional.pad(s[:, : self.m] * self.Ut(y), (0, self.n - self.m))
        return self.V((sy + r * vz) / (s * s + r))


def get(task: str, **params: Any) -> Operator:
    """Build the operator of a task by name: operators.get("sr4", image_shape=(3, 256, 256), seeds=[0])."""
    if task not in _REGISTRY:
        raise OperatorError(f"unknown task {task!r}; available tasks: {', '.join(names())}")
    cls = _REGISTRY[task]
    valid = parameters(task)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise OperatorError(f"task {task!r}: unknown parameter(s) {', '.join(unknown)}; "
                            f"valid parameters: {', '.join(valid)}")
    try:
        return cls(**params)
    except TypeError as err:
        raise OperatorError(f"task {task!r}: {err}; valid parameters: {', '.join(valid)}") from None


def parameters(task: str) -> list[str]:
    """The keyword parameters `get(task, ...)` accepts."""
    if task not in _REGISTRY:
        raise OperatorError(f"unknown task {task!r}; available tasks: {', '.join(names())}")
    sig = inspect.signature(_REGISTRY[task].__init__)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [name for name, p in sig.parameters.items() if name != "self" and p.kind in kinds]


def must_state(task: str) -> dict[str, str]:
    """Parameters a benchmark protocol must set explicitly for `task` (name -> the choices, in words), from the
    operator class's `protocol_must_state`: their default is one solver family's convention, so a number made
    with it would not say which one it used (bench/protocol.py). {} for tasks without such parameters."""
    return dict(getattr(_REGISTRY.get(task), "protocol_must_state", {}) or {})


def names() -> list[str]:
    return sorted(_REGISTRY)
