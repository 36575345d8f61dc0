"""The `Operator` interface and the task registry (design.md "Operator").

An operator is built for one batch: `operators.get(task, image_shape=(3, H, W), seeds=[s_1..s_B],
sigma_y=0.05, **params)`. Each image's random parameters (mask, kernel, box position) are drawn from
its own seed, so image i's measurement never depends on what else is in the batch. With
`shared_params=True` (the SPGD/DAPS protocol: one mask / kernel for the whole run) every image uses
the parameters drawn from `seeds[0]`.

Measurement noise: y = A(x) + sigma_y n with sigma_y in [-1, 1] pixel units (the DPS/SPGD
convention; see operators/noise.py for what other repos mean by "0.05"). Solvers read `A.sigma_y`
and convert it to their own convention in one documented place.

Subclasses register themselves by defining a class attribute `name` (a task name) and implement
`forward`; linear operators also `adjoint` and, where a closed form exists, `pinv`, `prox`, `svd`.
`select(idx)` returns the operator restricted to (or repeated over) the given batch indices.
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch

Tensor = torch.Tensor

_REGISTRY: dict[str, type["Operator"]] = {}


class OperatorError(ValueError):
    """Bad operator input (unknown task, parameter, image size or channel count)."""


class Operator:
    """Base class: a batched degradation operator with per-image parameters."""

    name: ClassVar[str] = ""
    is_linear: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            _REGISTRY[cls.name] = cls

    def __init__(self, image_shape: Sequence[int] = (3, 256, 256), sigma_y: float = 0.0) -> None:
        self.image_shape = tuple(int(s) for s in image_shape)
        self.sigma_y = float(sigma_y)

    # --- to implement ---------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def select(self, idx: Sequence[int] | Tensor) -> "Operator":
        """The operator for batch indices idx (repeats allowed: DPPS candidates, sub-batches)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Every parameter that decides the measurement, for records and table footers."""
        return {"task": self.name, "sigma_y": self.sigma_y, "noise_units": "[-1,1] pixel std"}

    # --- shared ---------------------------------------------------------------------------------
    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def measure(self, x: Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Tensor:
        """y = A(x) + sigma_y n. A list of generators gives each image its own noise stream."""
        y = self.forward(x)
        if self.sigma_y == 0:
            return y
        return y + self.sigma_y * randn_per_image(y, generator)

    def check_input(self, x: Tensor) -> None:
        if x.ndim != 4:
            raise OperatorError(f"{self.name}: expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
        if tuple(x.shape[1:]) != self.image_shape:
            raise OperatorError(
                f"{self.name}: built for images of shape {self.image_shape}, got {tuple(x.shape[1:])}; "
                f"build the operator with image_shape={tuple(x.shape[1:])} or resize the images")


class LinearOperator(Operator):
    """A linear operator: adjoint always; pinv / prox / svd where available."""

    is_linear: ClassVar[bool] = True

    def adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def pinv(self, y: Tensor) -> Tensor:
        raise OperatorError(f"{self.name}: no closed-form pseudo-inverse")

    def prox(self, z: Tensor, y: Tensor, rho: float | Tensor) -> Tensor:
        """argmin_x ||y - A x||^2 + rho ||x - z||^2 (rho scalar or per image, shape (B,))."""
        raise NotImplementedError

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
    (padded with zeros up to n). `U`/`Ut` act on the measurement space flattened to (B, m).
    """

    def V(self, v: Tensor) -> Tensor: ...  # (B, n) -> (B, C, H, W)
    def Vt(self, x: Tensor) -> Tensor: ...  # (B, C, H, W) -> (B, n)
    def U(self, u: Tensor) -> Tensor: ...  # (B, m) -> y-shaped
    def Ut(self, y: Tensor) -> Tensor: ...  # y-shaped -> (B, m)
    def singulars(self) -> Tensor: ...  # (B, n) with zeros past the rank


def get(task: str, **params: Any) -> Operator:
    """Build the operator of a task by name: operators.get("sr4", image_shape=(3, 256, 256), seeds=[0])."""
    if task not in _REGISTRY:
        raise OperatorError(f"unknown task {task!r}; available tasks: {', '.join(names())}")
    cls = _REGISTRY[task]
    try:
        return cls(**params)
    except TypeError as err:
        raise OperatorError(f"task {task!r}: {err}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def randn_per_image(like: Tensor, generator: torch.Generator | Sequence[torch.Generator] | None) -> Tensor:
    """Standard normal noise shaped like `like`; a list of generators draws image i from generator i."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device="cpu").to(like.device)
    gens = list(generator)
    if len(gens) != like.shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {like.shape[0]}")
    return torch.stack([torch.randn(like.shape[1:], generator=g, dtype=like.dtype) for g in gens]).to(like.device)
