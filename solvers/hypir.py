"""HYPIR — a one-step restorer initialised from the diffusion prior (Lin et al. 2025, arXiv 2507.20590).

Spec: shared/spec/hypir.md (§1 the official generator, §6 our pixel-space ADM adaptation). HYPIR is a
*trained, task-specific* method, unlike the zero-shot solvers: the prior's UNet, at fixed time indices
(k_m, k_c), is turned into an x0-predictor and LoRA adapters are trained adversarially on pairs of the task
(`python -m bench train-restorer`, bench/train_restorer.py). At test time it is one network call:

    u = P(y)                                   restorer input, per task (`restorer_input`, §6.4)
    eps = eps_{theta + Delta}(u, k_m)          the UNet with the trained LoRA (first 3 output channels)
    x_hat = (u - sqrt(1 - abar_{k_c}) eps) / sqrt(abar_{k_c})          (`prior.x0_from_eps`, not clipped)
    x_hat <- colour fix (SR / deblur only, §6.7): lowest wavelet band of x_hat replaced by that of u
    x_hat <- clamp to [-1, 1]

No noise is added to u and u is not scaled by sqrt(abar): the degraded image is presented as if it were
a noisy sample at k_m (§1.2). There is no data-consistency step (HYPIR has none; §6.7). Budget: exactly
1 forward NFE and 0 backward per image; deterministic.

`adapter` (hyper-parameter): a `.safetensors` file written by train-restorer, or a folder holding
`hypir_<prior>_<task>.safetensors` (one per prior and task), or "init": no adapter, the untrained
generator G_0 (the diffusion model's one-step denoiser of u; Theorem 1's initial restorer, any prior).
The adapter's metadata must name this task and the checksum of this prior's weights (`weights_sha256`);
k_m / k_c are those it was trained with. A missing or mismatched adapter is one SolverError line.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from operators.base import Operator
from priors.lora import lora_applied, weights_sha256
from solvers.base import RNG, Solver, SolverError, initial_estimate

Tensor = torch.Tensor

ADAPTER_FORMAT = "restorebench-hypir-adapter/1"
#: metadata every adapter file carries (values are strings; numbers as JSON)
ADAPTER_KEYS = ("format", "prior", "prior_sha256", "task", "task_params", "sigma_y", "k_m", "k_c", "rank",
                "alpha", "targets", "lora", "steps", "batch_size", "images_seen", "train_seconds", "device", "precision",
                "discriminator", "data_manifest", "data_manifest_sha256", "loss_weights", "ema", "input")
REPO_ROOT = Path(__file__).resolve().parents[1]
COLOUR_FIX_TASKS = ("sr", "deblur")  # task-name prefixes where the colour fix applies (§6.7); never inpainting


def adapter_filename(prior: str, task: str) -> str:
    """The file name train-restorer writes and a folder `adapter` is searched for."""
    return f"hypir_{prior}_{task}.safetensors"


def restorer_input(y: Tensor, A: Operator, image_shape: tuple[int, ...]) -> Tensor:
    """u = P(y) (spec §6.4, [ours] per task): SR -> bicubic upsampling of y to the image size (HYPIR's
    inference choice); inpainting -> m * y (holes 0, mid-grey in [-1, 1]); a measurement of the image's shape
    (deblurring) -> y; anything else -> the operator's pseudo-inverse / adjoint (`initial_estimate`)."""
    name = getattr(A, "name", "")
    if name.startswith("sr"):
        return F.interpolate(y, size=tuple(image_shape[-2:]), mode="bicubic", align_corners=False)
    if name.startswith("inpaint"):
        return A.adjoint(y)
    if tuple(y.shape[1:]) == tuple(image_shape):
        return y
    return initial_estimate(y, A, image_shape)


def generator_x0(prior: torch.nn.Module, u: Tensor, k_m: int, k_c: int) -> Tensor:
    """G(u) = x0 from the prior's eps at (u, k_m), converted with abar_{k_c}, not clipped (§6.2); one NFE."""
    return prior.x0_from_eps(u, k_c, prior.eps(u, k_m), clip=False)


def wavelet_low(x: Tensor, levels: int = 5) -> Tensor:
    """Lowest band of the a-trous decomposition (3x3 kernel [1,2,1]^T [1,2,1] / 16 at dilations 1, 2, ..., 2^(levels-1),
    replicate padding), spec §1.6 step 5."""
    c = x.shape[1]
    k1 = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (k1[:, None] * k1[None, :] / 16).expand(c, 1, 3, 3).contiguous()
    low = x
    for i in range(levels):
        d = 2 ** i
        low = F.conv2d(F.pad(low, (d, d, d, d), mode="replicate"), kernel, dilation=d, groups=c)
    return low


def colour_fix(x_hat: Tensor, u: Tensor) -> Tensor:
    """HYPIR's wavelet colour fix: high-frequency part of x_hat + lowest band of u."""
    return x_hat - wavelet_low(x_hat) + wavelet_low(u)


def read_adapter(path: str | Path) -> tuple[dict[str, str], dict[str, Tensor]]:
    """(metadata, LoRA state dict) of an adapter file; SolverError (one line) when it is not one."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        state = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - truncated file, not safetensors, ...: one line names it
        raise SolverError(f"hypir: {path} is not a readable adapter file ({type(err).__name__}: "
                          f"{' '.join(str(err).split())[:160]}); re-create it with `python -m bench train-restorer`") from None
    if meta.get("format") != ADAPTER_FORMAT:
        raise SolverError(f"hypir: {path} is not a RestoreBench HYPIR adapter (metadata format "
                          f"{meta.get('format')!r}, expected {ADAPTER_FORMAT!r}); use a file written by "
                          "`python -m bench train-restorer`")
    return meta, state


class HYPIR(Solver):
    """HYPIR: one network call of the prior's UNet with a trained LoRA adapter (1 NFE; trained per task)."""

    name = "hypir"
    smoke: ClassVar[dict[str, Any]] = {"adapter": "init"}

    def __init__(self, prior: torch.nn.Module, task: str | None = None, dataset: str | None = None,
                 **overrides: Any) -> None:
        super().__init__(prior, task=task, dataset=dataset, **overrides)
        self.adapter_path: Path | None = None
        self.adapter_meta: dict[str, str] = {}
        self._state: dict[str, Tensor] | None = None
        self._state_on: dict[str, Tensor] | None = None
        self._k = (int(self.params["k_m"]), int(self.params["k_c"]))
        if self.adapter not in (None, "init") and task is not None:
            self._load_adapter()

    # ---------------------------------------------------------------- adapter
    def _adapter_file(self) -> Path:
        prior_name = str(getattr(self.prior, "name", "prior"))
        given = Path(str(self.adapter)).expanduser()
        candidates = [given] if given.is_absolute() else [given, REPO_ROOT / given]
        for base in candidates:
            path = base / adapter_filename(prior_name, str(self.task)) if base.is_dir() else base
            if path.is_file():
                return path
        want = given if given.suffix == ".safetensors" else given / adapter_filename(prior_name, str(self.task))
        raise SolverError(f"hypir: no adapter for prior {prior_name!r}, task {self.task!r}: {want} not found; train "
                          f"one with `python -m bench train-restorer --prior {prior_name} --task {self.task} --data "
                          f"FOLDER --out {given if given.suffix != '.safetensors' else given.parent}` or set adapter: init")

    def _load_adapter(self) -> None:
        path = self._adapter_file()
        meta, state = read_adapter(path)
        prior_name = str(getattr(self.prior, "name", "prior"))
        if meta.get("task") != self.task:
            raise SolverError(f"hypir: adapter {path} was trained for task {meta.get('task')!r}, not {self.task!r}; "
                              f"use {adapter_filename(prior_name, str(self.task))} (one adapter per task)")
        unet = getattr(self.prior, "unet", None)
        if unet is None:
            raise SolverError(f"hypir: prior {prior_name!r} has no UNet to adapt; trained adapters apply to ADM priors "
                              "(use adapter: init for the untrained one-step restorer)")
        mine = weights_sha256(unet)
        if meta.get("prior_sha256") != mine:
            raise SolverError(f"hypir: adapter {path} was trained on prior {meta.get('prior')!r} with weights sha256 "
                              f"{str(meta.get('prior_sha256'))[:12]}..., this prior {prior_name!r} has {mine[:12]}...; "
                              "use the adapter trained on this checkpoint or retrain")
        self.adapter_path, self.adapter_meta, self._state = path, meta, state
        self._k = (int(json.loads(meta["k_m"])), int(json.loads(meta["k_c"])))

    def _device_state(self, device: torch.device) -> dict[str, Tensor]:
        assert self._state is not None
        if self._state_on is None or next(iter(self._state_on.values())).device != device:
            self._state_on = {k: v.to(device) for k, v in self._state.items()}
        return self._state_on

    # ---------------------------------------------------------------- solver
    def budget(self) -> dict[str, int]:
        return {"nfe_forward": 1, "nfe_backward": 0}

    def _solve(self, y: Tensor, A: Operator, rng: RNG) -> Tensor:
        if self.adapter is None:
            raise SolverError("hypir: no adapter given; set adapter to the folder (or file) written by `python -m "
                              "bench train-restorer`, or adapter: init for the untrained one-step restorer")
        if self.adapter != "init" and self._state is None:
            self._load_adapter()
        shape = tuple(self.prior.image_shape)
        k_m, k_c = self._k
        with torch.no_grad():
            u = restorer_input(y, A, shape)
            if self._state is None:
                x_hat = generator_x0(self.prior, u, k_m, k_c)
            else:
                with lora_applied(self.prior.unet, self._device_state(u.device)):
                    x_hat = generator_x0(self.prior, u, k_m, k_c)
            if self.color_fix and A.name.startswith(COLOUR_FIX_TASKS):
                x_hat = colour_fix(x_hat, u)
        self.check_finite(x_hat, "hypir output")
        return x_hat.clamp(-1, 1)

    def external_models(self) -> dict[str, str]:
        """The trained adapter (file, sha256, what it was trained on) and its training cost; {} for adapter: init."""
        if self._state is None or self.adapter_path is None:
            return {}
        from common.fileio import sha256_file
        m = self.adapter_meta
        return {
            "restorer adapter": (f"HYPIR LoRA {self.adapter_path.name} (sha256 {sha256_file(self.adapter_path)}; "
                                 f"rank {m.get('rank')}, k_m {m.get('k_m')}, k_c {m.get('k_c')}; trained per task on "
                                 f"{m.get('data_manifest')})"),
            "training": training_summary(m),
        }


def training_summary(meta: dict[str, str]) -> str:
    """One line of training cost from adapter metadata: steps, batch, images, hours, device, discriminator."""
    def num(key: str) -> Any:
        try:
            return json.loads(meta.get(key, "null"))
        except ValueError:
            return meta.get(key)
    hours = (num("train_seconds") or 0) / 3600
    return (f"{num('steps')} steps x batch {num('batch_size')} ({num('images_seen')} images), {hours:.2f} h on "
            f"{meta.get('device', '?')} ({meta.get('precision', 'fp32')}); discriminator: {meta.get('discriminator', '?')}")
