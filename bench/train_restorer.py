"""Training of a HYPIR one-step restorer for one (prior, task) (spec shared/spec/hypir.md §2, §6).

Generator: the prior's ADM UNet, frozen, with PEFT LoRA adapters (priors/lora.py; rank 64, alpha = rank,
Gaussian init so step 0 is the prior exactly); x_hat = x0_from_eps(u, k_c, eps_{theta+Delta}(u, k_m)) with
u = P(y) (solvers/hypir.py `restorer_input`), not clipped during training.
Pairs: the benchmark's own operator and noise (`operators.get(task, **task_params)`, sigma_y), fresh
operator parameters (mask, kernel) and noise for every sample, random horizontal flip of the clean image.
Loss: G: 1 * MSE + 5 * LPIPS-VGG + 0.5 * BCE(D(x_hat), 0.8); D: BCE(D(x), 0.8) + BCE(D(x_hat), 0)
(bench/restorer_discriminator.py). AdamW (lr 1e-5, betas (0.9, 0.999), weight decay 0.01) for the LoRA
weights and the D heads; gradients clipped to global norm 1.0 for each; EMA 0.999 of the LoRA weights
after every G update. One step = one G update on one fresh batch + one D update on another ([H]
base.py: batches alternate), so `steps` counts D steps like HYPIR's max_train_steps.

Reproducible and resumable: every random draw of step s (batch indices, flips, operator seeds, noise)
comes from streams seeded by (seed, step, role) (bench/seeding.py), so a run resumed from a checkpoint
(`checkpoint_every` steps, written atomically with everything: LoRA, EMA, D heads with their
spectral-norm vectors, both optimiser states, the log) gives the same weights as an uninterrupted one.

Output: the EMA adapter as safetensors with metadata (solvers/hypir.py ADAPTER_KEYS): prior name and
weights checksum, task and its parameters, k_m, k_c, rank, steps, batch, images seen, wall time,
device, precision, discriminator backbone, data manifest and its hash.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

import operators
from bench.errors import BenchError
from bench.restorer_discriminator import REAL_TARGET, Discriminator, bce_multilevel
from bench.seeding import generator as stream_generator
from bench.seeding import stream_seed
from common.fileio import atomic_write
from priors.lora import (ADM_TARGETS, apply_lora, load_lora_state, lora_parameters, lora_state_dict, peft_version,
                         weights_sha256)
from solvers.hypir import ADAPTER_FORMAT, generator_x0, restorer_input

Tensor = torch.Tensor


@dataclass
class TrainConfig:
    """Everything that decides the trained weights (stored in checkpoints and, in part, in the adapter)."""

    prior: str
    task: str
    task_params: dict[str, Any] = field(default_factory=dict)
    sigma_y: float = 0.05
    steps: int = 30000                 # [H] max_train_steps (counted in D steps)
    batch_size: int = 8                # [ours] HYPIR: 6 per GPU at 512^2; 8 at 256^2
    rank: int = 64                     # [ours] spec §6.3 (HYPIR's 256 exceeds the 128-channel layers' rank)
    alpha: float | None = None         # None = rank (scale 1, as HYPIR)
    k_m: int = 200                     # [H] model_t (literal, spec §6.2)
    k_c: int = 200                     # [H] coeff_t
    lr_g: float = 1e-5
    lr_d: float = 1e-5
    weight_decay: float = 0.01         # AdamW default ([H] maps "adam" to AdamW)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema: float = 0.999
    w_mse: float = 1.0
    w_lpips: float = 5.0
    w_adv: float = 0.5
    lpips_net: str = "vgg"
    discriminator: str = "lpips-vgg16"  # [ours] spec §6.5 option 2 (HYPIR: OpenCLIP ConvNeXt-XXL)
    d_width: int = 512                 # [H] head width
    seed: int = 231                    # [H] yaml seed
    flip: bool = True                  # [H] random horizontal flip
    checkpoint_every: int = 1000
    precision: str = "fp32"            # fp32 | bf16 (autocast of the UNet and D; LoRA kept in fp32)
    checkpointing: bool = False        # activation checkpointing of the UNet

    def adapter_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)


# ------------------------------------------------------------------------------------------- data
class ImageSource:
    """Clean training images: tensors in memory, or files read on demand (bench.data.load_image)."""

    def __init__(self, images: Tensor | Sequence[Path], size: int) -> None:
        self.tensor = images if isinstance(images, torch.Tensor) else None
        self.paths = None if isinstance(images, torch.Tensor) else [Path(p) for p in images]
        self.size = size
        if len(self) == 0:
            raise BenchError("train-restorer: no training images; give a folder or manifest that lists some")

    def __len__(self) -> int:
        return int(self.tensor.shape[0]) if self.tensor is not None else len(self.paths or [])

    def load(self, index: int) -> Tensor:
        if self.tensor is not None:
            return self.tensor[index]
        from bench.data import load_image
        return load_image(self.paths[index], self.size)  # type: ignore[index]


def training_pairs(source: ImageSource, config: TrainConfig, step: int, role: str,
                   device: torch.device) -> tuple[Tensor, Tensor]:
    """(x, u) for one batch of step `step` and role "g" or "d": every draw from (seed, step, role) streams."""
    g = torch.Generator().manual_seed(stream_seed(config.seed, "batch", step, role))
    idx = torch.randint(len(source), (config.batch_size,), generator=g).tolist()
    flips = torch.rand(config.batch_size, generator=g).lt(0.5).tolist()
    x = torch.stack([source.load(i).flip(-1) if (config.flip and f) else source.load(i) for i, f in zip(idx, flips)])
    x = x.to(device)
    shape = tuple(x.shape[1:])
    seeds = [stream_seed(config.seed, "operator", config.task, step, role, b, bits=31) for b in range(len(idx))]
    A = operators.get(config.task, image_shape=shape, seeds=seeds, sigma_y=config.sigma_y, shared_params=False,
                      **config.task_params)
    noise = [stream_generator(config.seed, "noise", config.task, step, role, b) for b in range(len(idx))]
    y = A.measure(x, noise)
    return x, restorer_input(y, A, shape)


# ------------------------------------------------------------------------------------------- trainer
class RestorerTrainer:
    """The state of one training run: G (prior + LoRA), EMA, D, optimisers, step, log."""

    def __init__(self, prior: torch.nn.Module, config: TrainConfig, source: ImageSource,
                 lpips: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        unet = getattr(prior, "unet", None)
        if unet is None:
            raise BenchError(f"train-restorer: prior {getattr(prior, 'name', prior)!r} has no ADM UNet to adapt")
        self.prior, self.config, self.source = prior, config, source
        self.device = prior.device
        self.prior_sha256 = weights_sha256(unet)  # before LoRA is applied
        if config.checkpointing and hasattr(prior, "set_checkpointing"):
            prior.set_checkpointing(True)
        apply_lora(unet, config.rank, config.adapter_alpha(), ADM_TARGETS, seed=config.seed)
        unet.to(self.device)
        self.lora = lora_parameters(unet)
        self.ema = {k: v.clone() for k, v in lora_state_dict(unet).items()}
        self.D = Discriminator(config.discriminator, config.d_width, seed=config.seed).to(self.device)
        self.opt_g = torch.optim.AdamW(self.lora, lr=config.lr_g, betas=config.betas, weight_decay=config.weight_decay)
        self.opt_d = torch.optim.AdamW(self.D.head_parameters(), lr=config.lr_d, betas=config.betas,
                                       weight_decay=config.weight_decay)
        self.lpips = lpips if lpips is not None or config.w_lpips == 0 else _lpips_loss(config.lpips_net, self.device)
        self.step = 0
        self.log: list[dict[str, float]] = []
        self.seconds = 0.0

    # ---------------------------------------------------------------- pieces
    def generate(self, u: Tensor) -> Tensor:
        with self._autocast():
            return generator_x0(self.prior, u, self.config.k_m, self.config.k_c).float()

    def _autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        import contextlib
        return contextlib.nullcontext()

    def _d(self, x: Tensor) -> list[Tensor]:
        with self._autocast():
            return [level.float() for level in self.D(x)]

    def generator_losses(self, x: Tensor, x_hat: Tensor) -> dict[str, Tensor]:
        """MSE, LPIPS and adversarial (BCE to 0.8) terms of the G loss, and their weighted total."""
        c = self.config
        mse = F.mse_loss(x_hat, x)
        lp = self.lpips(x_hat, x).mean() if (c.w_lpips and self.lpips is not None) else x_hat.new_zeros(())
        self.D.eval()
        adv = bce_multilevel(self._d(x_hat), REAL_TARGET)
        return {"mse": mse, "lpips": lp, "adv": adv, "total": c.w_mse * mse + c.w_lpips * lp + c.w_adv * adv}

    def discriminator_losses(self, x: Tensor, x_hat: Tensor) -> dict[str, Tensor]:
        self.D.train()
        real, fake = self._d(x), self._d(x_hat.detach())
        loss_real, loss_fake = bce_multilevel(real, REAL_TARGET), bce_multilevel(fake, 0.0)
        return {"real": loss_real, "fake": loss_fake, "total": loss_real + loss_fake,
                "logit_real": _mean_logit(real), "logit_fake": _mean_logit(fake)}

    # ---------------------------------------------------------------- one step
    def train_step(self) -> dict[str, float]:
        """One G update on a fresh batch, then one D update on another; returns the logged values."""
        t0 = time.perf_counter()
        c = self.config
        x, u = training_pairs(self.source, c, self.step, "g", self.device)
        x_hat = self.generate(u)
        g = self.generator_losses(x, x_hat)
        self.opt_g.zero_grad(set_to_none=True)
        g["total"].backward()
        g_norm = torch.nn.utils.clip_grad_norm_(self.lora, c.grad_clip)
        g = {k: v.detach() for k, v in g.items()}
        self.opt_g.step()
        with torch.no_grad():
            current = lora_state_dict(self.prior.unet)
            for k, v in current.items():
                self.ema[k].mul_(c.ema).add_(v, alpha=1 - c.ema)
        x, u = training_pairs(self.source, c, self.step, "d", self.device)
        with torch.no_grad():
            x_hat = self.generate(u)
        d = self.discriminator_losses(x, x_hat)
        self.opt_d.zero_grad(set_to_none=True)
        d["total"].backward()
        d_norm = torch.nn.utils.clip_grad_norm_(self.D.head_parameters(), c.grad_clip)
        d = {k: v.detach() for k, v in d.items()}
        self.opt_d.step()
        self.step += 1
        entry = {"step": self.step, "mse": float(g["mse"]), "lpips": float(g["lpips"]), "adv_g": float(g["adv"]),
                 "loss_g": float(g["total"]), "loss_d": float(d["total"]), "logit_real": float(d["logit_real"]),
                 "logit_fake": float(d["logit_fake"]), "grad_g": float(g_norm), "grad_d": float(d_norm)}
        if not all(math.isfinite(v) for v in entry.values()):
            raise BenchError(f"train-restorer: non-finite loss at step {self.step} ({entry}); lower the learning "
                             "rates or train in fp32")
        self.log.append(entry)
        self.seconds += time.perf_counter() - t0
        return entry

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        heads = {k: v for k, v in self.D.state_dict().items() if not k.startswith("backbone.")}
        return {"format": "restorebench-hypir-train/1", "config": asdict(self.config), "step": self.step,
                "prior_sha256": self.prior_sha256, "lora": lora_state_dict(self.prior.unet), "ema": self.ema,
                "d_heads": heads, "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "log": self.log, "seconds": self.seconds}

    def save_checkpoint(self, path: Path) -> Path:
        state = self.state()
        return atomic_write(path, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as err:  # noqa: BLE001 - truncated / foreign file: one line
            raise BenchError(f"train-restorer: cannot read checkpoint {path} ({type(err).__name__}); delete it to "
                             "start over") from None
        if state.get("format") != "restorebench-hypir-train/1":
            raise BenchError(f"train-restorer: {path} is not a train-restorer checkpoint; delete it or pass another --out")
        if state["prior_sha256"] != self.prior_sha256:
            raise BenchError(f"train-restorer: checkpoint {path} belongs to other prior weights; use another --out")
        mine = asdict(self.config)
        differ = sorted(k for k in mine if k not in ("steps", "checkpoint_every")
                        and json.dumps(mine[k]) != json.dumps(state["config"].get(k)))
        if differ:
            raise BenchError(f"train-restorer: checkpoint {path} was made with other settings ({', '.join(differ)}); "
                             "resume with the same settings or use another --out")
        load_lora_state(self.prior.unet, state["lora"])
        self.ema = {k: v.clone() for k, v in state["ema"].items()}
        self.D.load_state_dict({**{k: v for k, v in self.D.state_dict().items() if k.startswith("backbone.")},
                                **state["d_heads"]}, strict=True)
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step, self.log, self.seconds = int(state["step"]), list(state["log"]), float(state["seconds"])

    # ---------------------------------------------------------------- adapter
    def adapter_metadata(self, data_manifest: str, data_sha256: str) -> dict[str, str]:
        c = self.config
        return {
            "format": ADAPTER_FORMAT, "prior": c.prior, "prior_sha256": self.prior_sha256, "task": c.task,
            "task_params": json.dumps(c.task_params, sort_keys=True), "sigma_y": json.dumps(c.sigma_y),
            "k_m": json.dumps(c.k_m), "k_c": json.dumps(c.k_c), "rank": json.dumps(c.rank),
            "alpha": json.dumps(c.adapter_alpha()), "targets": json.dumps(list(ADM_TARGETS)), "lora": peft_version(),
            "steps": json.dumps(self.step), "batch_size": json.dumps(c.batch_size),
            "images_seen": json.dumps(2 * self.step * c.batch_size), "train_seconds": json.dumps(round(self.seconds, 1)),
            "device": _device_words(self.device), "precision": c.precision,
            "discriminator": f"{self.D.describe()}; BCE(0.8) multi-level", "data_manifest": data_manifest,
            "data_manifest_sha256": data_sha256,
            "loss_weights": json.dumps({"mse": c.w_mse, "lpips": c.w_lpips, "lpips_net": c.lpips_net, "adv": c.w_adv}),
            "ema": json.dumps(c.ema), "input": "u = P(y): sr bicubic up, inpaint m*y, deblur y (solvers/hypir.py)",
        }

    def write_adapter(self, path: Path, data_manifest: str, data_sha256: str) -> Path:
        from safetensors.torch import save_file
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.ema.items()}
        meta = self.adapter_metadata(data_manifest, data_sha256)
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _mean_logit(levels: list[Tensor]) -> Tensor:
    return torch.stack([lv.detach().float().mean() for lv in levels]).mean()


def _lpips_loss(net: str, device: torch.device) -> Callable[[Tensor, Tensor], Tensor]:
    from bench.metrics import official_lpips
    model = official_lpips(net, str(device))
    return lambda a, b: model(a, b).flatten()


def _device_words(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def manifest_hash(entries: Sequence[dict[str, Any]]) -> str:
    """sha256 of the canonical JSON of the training list (id, file, sha256 when known)."""
    canon = [{k: e.get(k) for k in ("id", "file", "sha256")} for e in entries]
    return hashlib.sha256(json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def run(trainer: RestorerTrainer, checkpoint: Path | None, on_step: Callable[[dict[str, float]], None] | None = None,
        stop_after: int | None = None) -> None:
    """Train up to `config.steps` (or `stop_after` more steps), checkpointing every `checkpoint_every` steps
    and at the end."""
    c = trainer.config
    end = c.steps if stop_after is None else min(c.steps, trainer.step + stop_after)
    while trainer.step < end:
        entry = trainer.train_step()
        if on_step is not None:
            on_step(entry)
        if checkpoint is not None and (trainer.step % c.checkpoint_every == 0 or trainer.step == end):
            trainer.save_checkpoint(checkpoint)
