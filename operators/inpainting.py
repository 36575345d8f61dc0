"""Inpainting: A(x) = m * x with a binary pixel mask m (1 = observed), the same in every channel.

Spec solvers-baselines.md §2.1 and solvers-seed.md §2.8 (DPS `mask_generator`, SPGD/DAPS configs).
* `inpaint_random`: p ~ uniform(lo, hi), then exactly int(p*H*W) distinct pixels removed by
  `choice(H*W, n, replace=False)` (numpy legacy draw order). SPGD Table 1: p_range (0.8, 0.8)
  -> 52428 of 65536 pixels removed.
* `inpaint_box`: hole side lengths h, w ~ randint(lo, hi) (DPS `mask_len_range`, default a fixed
  128x128 hole), then top ~ randint(margin, H - margin - h), left ~ randint(margin, W - margin - w).
  Position rules: "dps" (margin 16; DPS/DPPS), "spgd" / "daps" (margin 32), "center" (fixed, no draw),
  or an explicit `offset` (top, left) of the hole (fixed, no draw): DCDP's hard-coded 100x100 box at
  rows/cols 100-199 of a 256x256 image is `hole_size=100, offset=(100, 100)` (spec seed §5.2).
The measurement keeps the image shape (zeros in the hole; noise is added everywhere, as in DPS).

SVD (DDRM `Inpainting`, spec §4.4): U = V = a permutation of the pixel-major / channel-minor vector,
[kept entries, missing entries]; s = 1 on the kept entries. Per-image masks give per-image
permutations, applied with one batched gather.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from operators.base import SVD, LinearOperator, OperatorError, Tensor
from operators.linalg import expand_per_image
from operators.separable import inverse_permutation

BOX_POSITIONS = {"dps": 16, "dpps": 16, "spgd": 32, "daps": 32, "center": None}


def random_pixel_mask(rs: np.random.RandomState, height: int, width: int,
                      p_range: tuple[float, float]) -> np.ndarray:
    """DPS/SPGD random mask (H, W), 1 = kept: p ~ U(p_range), int(p*H*W) pixels removed without replacement."""
    total = height * width
    prob = rs.uniform(p_range[0], p_range[1])
    removed = rs.choice(total, int(total * prob), replace=False)
    mask = np.ones(total)
    mask[removed] = 0
    return mask.reshape(height, width)


def box_mask(rs: np.random.RandomState, height: int, width: int, len_range: tuple[int, int],
             margin: int | None, offset: tuple[int, int] | None = None) -> np.ndarray:
    """DPS `random_sq_bbox` mask (H, W), 1 = kept: sizes ~ randint(len_range), then top, left (margin);
    `offset` = (top, left) places the hole there instead (no position draw)."""
    hole_h = int(rs.randint(len_range[0], len_range[1]))
    hole_w = int(rs.randint(len_range[0], len_range[1]))
    if offset is not None:
        top, left = offset
    elif margin is None:
        top, left = (height - hole_h) // 2, (width - hole_w) // 2
    else:
        top = int(rs.randint(margin, height - margin - hole_h))
        left = int(rs.randint(margin, width - margin - hole_w))
    mask = np.ones((height, width))
    mask[top:top + hole_h, left:left + hole_w] = 0
    return mask


class MaskOperator(LinearOperator):
    """A(x) = m * x with per-image masks `mask` (P, 1, H, W) (1 = observed)."""

    batched_params = ("mask",)

    def _set_masks(self, masks: list[np.ndarray]) -> None:
        self.mask = torch.from_numpy(np.stack(masks)).to(torch.float64)[:, None]

    @property
    def missing_pixels(self) -> Tensor:
        """Number of removed pixels per parameter set (P,)."""
        return (self.mask == 0).flatten(1).sum(1)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.param("mask", x) * x

    def adjoint(self, y: Tensor) -> Tensor:
        self.check_input(y)
        return self.param("mask", y) * y

    def pinv(self, y: Tensor) -> Tensor:
        return self.adjoint(y)

    def prox(self, z: Tensor, y: Tensor, rho: float | Tensor, **_: Any) -> Tensor:
        """Exact: (m * y + rho z) / (m + rho), elementwise (DiffPIR / PnP-ADMM inpainting step)."""
        self.check_input(z)
        m = self.param("mask", z)
        r = expand_per_image(rho, z)
        return (m * y + r * z) / (m + r)

    @property
    def svd(self) -> "MaskSVD":
        if "svd" not in self._cache:
            self._cache["svd"] = MaskSVD(self.mask, self.image_shape[0])
        return self._cache["svd"]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "missing_pixels": self.missing_pixels.tolist()}


class MaskSVD(SVD):
    """U = V = permutation [kept entries, missing entries] of the pixel-major, channel-minor vector.

    Stored as one gather index per parameter set into the (C, H, W)-flattened image, so V^T is a
    single gather (index_select when the mask is shared) and V its inverse gather.
    """

    def __init__(self, mask: Tensor, channels: int) -> None:
        p, _, h, w = mask.shape
        self.shape = (channels, h, w)
        self.n = self.m = channels * h * w
        kept = mask.reshape(p, h * w).repeat_interleave(channels, dim=1) > 0  # pixel-major, channel-minor
        # stable partition [kept, missing] without sorting: the spectral position of every entry
        n_kept = kept.sum(1, keepdim=True)
        dest = torch.where(kept, kept.cumsum(1) - 1, n_kept + (~kept).cumsum(1) - 1)
        perm = inverse_permutation(dest)  # spectral position -> pixel-major entry
        self.index = (perm % channels) * (h * w) + perm // channels  # -> (C, H, W)-flat position
        self.inverse = inverse_permutation(self.index)
        self._singulars = (torch.arange(self.n)[None] < n_kept).to(torch.float64)

    def _take(self, flat: Tensor, index: str) -> Tensor:
        """Gather with index table `index` ("index" / "inverse"), moved to flat's device once and cached."""
        cache = self.__dict__.setdefault("_index_on", {})
        if (index, flat.device) not in cache:
            cache[index, flat.device] = getattr(self, index).to(flat.device)
        index = cache[index, flat.device]
        if index.shape[0] == 1:
            return flat.index_select(1, index[0])
        return torch.gather(flat, 1, index)

    def Vt(self, x: Tensor) -> Tensor:
        return self._take(x.reshape(x.shape[0], self.n), "index")

    def V(self, v: Tensor) -> Tensor:
        return self._take(v, "inverse").reshape(v.shape[0], *self.shape)

    U = V
    Ut = Vt

    def singulars(self, batch: int | None = None) -> Tensor:
        s = self._singulars
        return s if batch is None else s.expand(batch, -1)


class InpaintRandom(MaskOperator):
    """`inpaint_random`: exactly int(p*H*W) pixels removed, p ~ U(p_range) (default exactly 80 %)."""

    name = "inpaint_random"

    def __init__(self, image_shape: Sequence[int] = (3, 256, 256), sigma_y: float = 0.0,
                 seeds: Sequence[int] | None = None, shared_params: bool = False,
                 p_range: Sequence[float] = (0.8, 0.8)) -> None:
        super().__init__(image_shape, sigma_y, seeds, shared_params)
        lo, hi = (float(v) for v in p_range)
        if not 0 <= lo <= hi <= 1:
            raise OperatorError(f"{self.name}: p_range must satisfy 0 <= lo <= hi <= 1, got {tuple(p_range)}")
        self.p_range = (lo, hi)
        _, h, w = self.image_shape
        self._set_masks([random_pixel_mask(np.random.RandomState(s), h, w, self.p_range) for s in self.param_seeds])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "p_range": list(self.p_range)}


class InpaintBox(MaskOperator):
    """`inpaint_box`: a hole of hole_size (default 128x128) placed by rule `position`.

    position: "dps" (margin 16, the default), "spgd"/"daps" (margin 32) or "center"; `margin` overrides the
    rule's margin (e.g. for small test images). offset=(top, left): the hole's top-left pixel, fixed (give
    it instead of `position`; DCDP: hole_size 100, offset (100, 100)). mask_len_range=(lo, hi): DPS's random
    side lengths (hi exclusive).
    """

    name = "inpaint_box"

    def __init__(self, image_shape: Sequence[int] = (3, 256, 256), sigma_y: float = 0.0,
                 seeds: Sequence[int] | None = None, shared_params: bool = False,
                 position: str | None = None, hole_size: int = 128,
                 mask_len_range: Sequence[int] | None = None, margin: int | None = None,
                 offset: Sequence[int] | None = None) -> None:
        super().__init__(image_shape, sigma_y, seeds, shared_params)
        if offset is not None and (position is not None or margin is not None):
            raise OperatorError(f"{self.name}: give either offset=(top, left) (a fixed hole) or position/margin "
                                f"(a drawn one), not both")
        position = "dps" if position is None else position
        if position not in BOX_POSITIONS:
            raise OperatorError(f"{self.name}: unknown position rule {position!r}; valid: {', '.join(BOX_POSITIONS)}")
        self.position = position
        self.margin = BOX_POSITIONS[position] if margin is None or position == "center" else int(margin)
        lo, hi = (int(hole_size), int(hole_size) + 1) if mask_len_range is None else (int(v) for v in mask_len_range)
        if not 1 <= lo < hi:
            raise OperatorError(f"{self.name}: mask_len_range must be (lo, hi) with 1 <= lo < hi (hi exclusive)")
        self.len_range = (lo, hi)
        _, h, w = self.image_shape
        self.offset = None if offset is None else self._check_offset(offset, hi - 1, h, w)
        if self.offset is not None:
            self.position, self.margin = "offset", None
        need = hi - 1 + 2 * (self.margin or 0) + (1 if self.margin else 0)
        if self.offset is None and min(h, w) < need:
            raise OperatorError(
                f"{self.name}: a hole of up to {hi - 1}x{hi - 1} with margin {self.margin or 0} (position={position!r}) "
                f"does not fit a {h}x{w} image; use a smaller hole_size or position='center'")
        self._set_masks([box_mask(np.random.RandomState(s), h, w, self.len_range, self.margin, self.offset)
                         for s in self.param_seeds])

    def _check_offset(self, offset: Sequence[int], largest: int, h: int, w: int) -> tuple[int, int]:
        values = list(offset)
        if len(values) != 2 or any(int(v) != v for v in values):
            raise OperatorError(f"{self.name}: offset must be two integers (top, left), got {offset!r}")
        top, left = (int(v) for v in values)
        if top < 0 or left < 0 or top + largest > h or left + largest > w:
            raise OperatorError(f"{self.name}: a hole of up to {largest}x{largest} at offset ({top}, {left}) does not "
                                f"fit a {h}x{w} image; use offsets in [0, {h - largest}] x [0, {w - largest}]")
        return top, left

    def describe(self) -> dict[str, Any]:
        extra = {} if self.offset is None else {"offset": list(self.offset)}  # absent: drawn (hashes unchanged)
        return {**super().describe(), "position": self.position, "margin": self.margin,
                "mask_len_range": list(self.len_range), **extra}
