"""The ADM UNet of guided-diffusion (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image
Synthesis", arXiv:2105.05233, Sec. 3 and App. A) and the `ADMPrior` wrapping it.

Our own implementation of the architecture whose checkpoint format every public 256x256 pixel
diffusion model of the restoration literature uses (DPS `ffhq_10m.pt`, guided-diffusion
`256x256_diffusion_uncond.pt` and `lsun_bedroom.pt`). Module and parameter names follow the
reference state-dict layout (openai/guided-diffusion `unet.py`, spec solvers-baselines.md §1.1),
so real checkpoints load with `strict=True`; the maths follows the reference:

* timestep embedding: half = dim // 2, f_i = exp(-ln(10000) i / half), emb(t) = [cos(t f), sin(t f)]
  computed in float32 on the real-valued (possibly fractional) t;
  time MLP: Linear(C, 4C) -> SiLU -> Linear(4C, 4C);
* GroupNorm with 32 groups, eps 1e-5, always computed in float32 and cast back;
* ResBlock: h = conv3(SiLU(GN(x))) (with nearest x2 up / 2x2 average-pool down between SiLU and conv
  when it resamples, applied to the skip path as well); scale-shift norm
  h = GN(h) (1 + s) + b with (s, b) = Linear(SiLU(emb)) split in halves; h = conv3(dropout(SiLU(h)))
  with the last conv zero-initialised; output skip(x) + h, skip = identity or 1x1 conv;
* self-attention over the H*W positions, heads of `num_head_channels` channels: qkv = Conv1d(C, 3C)(GN(x));
  "legacy" order splits heads first ((3 ch) per head, q|k|v inside), the "new" order splits q|k|v
  first; softmax(q^T k / sqrt(ch)) v, output 1x1 projection (zero-initialised) added to x;
* UNet: input conv, per level `num_res_blocks` ResBlocks (+ attention where the downsample factor is
  in `attention_resolutions`), resampling between levels; middle ResBlock-Attention-ResBlock; the
  decoder concatenates every stored encoder activation; GN-SiLU-conv (zero-initialised) output with
  3 (eps) or 6 (eps and the learned-range variance value v) channels.

`create_unet(**flags)` takes guided-diffusion's model flags by name (`script_util.create_model`).

Equivalence check (done out of tree, not a test: the reference code is not a dependency): with the
same random weights loaded into both, outputs equal openai/guided-diffusion `UNetModel` bit for bit
in float32 (ffhq256 flags at 256x256; small configs with legacy/new attention order, with and
without scale-shift norm and resblock up/down; fractional t), and within float16 rounding
(2.5e-3 relative) with use_fp16.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _activation_checkpoint

from priors.base import DiffusionPrior
from priors.schedule import VPSchedule

Tensor = torch.Tensor

#: guided-diffusion model flags and their defaults (`script_util.model_and_diffusion_defaults`).
DEFAULT_FLAGS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "channel_mult": "",
    "attention_resolutions": "16,8",
    "num_heads": 4,
    "num_head_channels": -1,
    "num_heads_upsample": -1,
    "learn_sigma": False,
    "class_cond": False,
    "dropout": 0.0,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_fp16": False,
    "use_new_attention_order": False,
    "use_checkpoint": False,
}

#: channel multipliers used when `channel_mult` is "" (guided-diffusion `create_model`).
DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}

GROUPS = 32


# --------------------------------------------------------------------------- building blocks
def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [cos(t f_0..f_{h-1}), sin(t f_0..f_{h-1})], f_i = max_period^(-i/h), h = dim // 2."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.reshape(-1, 1).float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype, result cast back to the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        with _no_autocast(x):
            out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


def _autocast_device(device_type: str) -> bool:
    """Whether torch.autocast knows this device type (not `meta`, where the device audit runs)."""
    return device_type != "meta"


def _no_autocast(x: Tensor):
    if _autocast_device(x.device.type) and torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(GROUPS, channels)


def _zeroed(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Resample(nn.Module):
    """Parameter-free x2 nearest upsampling or 2x2 average-pool downsampling."""

    def __init__(self, up: bool) -> None:
        super().__init__()
        self.up = up

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest") if self.up else F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Nearest x2 upsampling followed by a 3x3 conv (used when resblock_updown is off)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample(nn.Module):
    """Strided 3x3 conv (used when resblock_updown is off)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class _Checkpointable(nn.Module):
    """Runs `_forward` through activation checkpointing when enabled and gradients are recorded."""

    use_checkpoint: bool = False

    def _run(self, *args: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return _activation_checkpoint(self._forward, *args, use_reentrant=False)
        return self._forward(*args)


class ResBlock(_Checkpointable):
    """Residual block conditioned on the time embedding, optionally resampling (up or down)."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, use_checkpoint: bool = False,
                 up: bool = False, down: bool = False) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.resample = Resample(up) if (up or down) else None
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(
            _norm(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            _zeroed(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self._run(x, emb)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        norm, act, conv = self.in_layers
        h = act(norm(x))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = conv(h)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = out_rest(out_norm(h + e))
        return self.skip_connection(x) + h


def qkv_attention(qkv: Tensor, num_heads: int, legacy_order: bool = True) -> Tensor:
    """softmax(q^T k / sqrt(ch)) v per head for qkv of shape (B, 3 * heads * ch, T) -> (B, heads * ch, T).

    Legacy order (guided-diffusion `QKVAttentionLegacy`): the 3C channels are split into heads first,
    each head holding [q | k | v]. New order (`QKVAttention`): split into [q | k | v] first, then heads.
    """
    b, width, length = qkv.shape
    ch = width // (3 * num_heads)
    if legacy_order:
        q, k, v = qkv.reshape(b, num_heads, 3 * ch, length).split(ch, dim=2)
    else:
        q, k, v = (z.reshape(b, num_heads, ch, length) for z in qkv.chunk(3, dim=1))
    # (B, heads, T, ch) layout, contiguous so that the fused CPU kernel is chosen (a strided last dim falls
    # back to the math path: 25 % slower at 16x16 maps); scale 1/sqrt(ch) is its default.
    q, k, v = (z.transpose(-1, -2).contiguous() for z in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(-1, -2).reshape(b, num_heads * ch, length)


class AttentionBlock(_Checkpointable):
    """Spatial self-attention with a residual connection."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_checkpoint: bool = False, use_new_attention_order: bool = False) -> None:
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"attention channels {channels} not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.legacy_order = not use_new_attention_order
        self.use_checkpoint = use_checkpoint
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x)

    def _forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = qkv_attention(self.qkv(self.norm(x)), self.num_heads, self.legacy_order)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class TimestepSequential(nn.Sequential):
    """Sequential container passing the time embedding to the ResBlocks it holds."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


# --------------------------------------------------------------------------- the UNet
class UNet(nn.Module):
    """ADM UNet; `forward(x, t) -> (B, out_channels, H, W)` with t of shape (B,) (fractional allowed)."""

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_ds: tuple[int, ...], channel_mult: tuple[float, ...],
                 dropout: float = 0.0, num_heads: int = 1, num_head_channels: int = -1,
                 num_heads_upsample: int = -1, use_scale_shift_norm: bool = False,
                 resblock_updown: bool = False, use_new_attention_order: bool = False,
                 use_checkpoint: bool = False) -> None:
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.dtype = torch.float32
        emb_dim = 4 * model_channels

        def resblock(ch_in: int, ch_out: int | None = None, **kw: bool) -> ResBlock:
            return ResBlock(ch_in, emb_dim, dropout, ch_out, use_scale_shift_norm=use_scale_shift_norm,
                            use_checkpoint=use_checkpoint, **kw)

        def attention(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, num_head_channels, use_checkpoint, use_new_attention_order)

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        ch = int(channel_mult[0] * model_channels)
        input_ch = ch
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [resblock(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(attention(ch, num_heads))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                down = resblock(ch, ch, down=True) if resblock_updown else Downsample(ch)
                self.input_blocks.append(TimestepSequential(down))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepSequential(resblock(ch), attention(ch, num_heads), resblock(ch))

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [resblock(ch + skip_channels.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_ds:
                    layers.append(attention(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(resblock(ch, ch, up=True) if resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zeroed(nn.Conv2d(input_ch, out_channels, 3, padding=1)))

    def convert_to_fp16(self) -> "UNet":
        """Run the torso (input, middle, output blocks) with float16 convolutions, as guided-diffusion's
        `use_fp16`: conv weights in half, norms in float32, time MLP and output head in float32."""
        for blocks in (self.input_blocks, self.middle_block, self.output_blocks):
            for m in blocks.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    m.half()
        self.dtype = torch.float16
        return self

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(self.time_embed[0].weight.dtype))
        h = x.to(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))


# --------------------------------------------------------------------------- flags -> UNet
def _parse_channel_mult(channel_mult: Any, image_size: int) -> tuple[float, ...]:
    if channel_mult in ("", None):
        if image_size not in DEFAULT_CHANNEL_MULT:
            raise ValueError(f"no default channel_mult for image_size {image_size}; "
                             f"pass channel_mult explicitly (e.g. '1,2,2,4'); defaults exist for {sorted(DEFAULT_CHANNEL_MULT)}")
        return DEFAULT_CHANNEL_MULT[image_size]
    if isinstance(channel_mult, str):
        return tuple(float(c) if "." in c else int(c) for c in channel_mult.split(","))
    return tuple(channel_mult)


def _parse_attention(attention_resolutions: Any, image_size: int) -> tuple[int, ...]:
    """Resolutions ("32,16,8") -> downsample factors (image_size // r)."""
    if isinstance(attention_resolutions, str):
        res = [int(r) for r in attention_resolutions.split(",") if r.strip()]
    elif isinstance(attention_resolutions, int):
        res = [attention_resolutions]
    else:
        res = [int(r) for r in attention_resolutions]
    return tuple(image_size // r for r in res)


def create_unet(**flags: Any) -> UNet:
    """Build the ADM UNet from guided-diffusion model flags (missing flags take guided-diffusion's defaults)."""
    unknown = sorted(set(flags) - set(DEFAULT_FLAGS))
    if unknown:
        raise ValueError(f"unknown UNet flag(s) {unknown}; valid flags: {sorted(DEFAULT_FLAGS)}")
    f = {**DEFAULT_FLAGS, **flags}
    if f["class_cond"]:
        raise ValueError("class_cond=True (class-conditional ADM) is not supported: RestoreBench uses "
                         "unconditional priors only; use an unconditional checkpoint (e.g. 256x256_diffusion_uncond.pt)")
    size = int(f["image_size"])
    unet = UNet(
        image_size=size,
        in_channels=3,
        model_channels=int(f["num_channels"]),
        out_channels=6 if f["learn_sigma"] else 3,
        num_res_blocks=int(f["num_res_blocks"]),
        attention_ds=_parse_attention(f["attention_resolutions"], size),
        channel_mult=_parse_channel_mult(f["channel_mult"], size),
        dropout=float(f["dropout"]),
        num_heads=int(f["num_heads"]),
        num_head_channels=int(f["num_head_channels"]),
        num_heads_upsample=int(f["num_heads_upsample"]),
        use_scale_shift_norm=bool(f["use_scale_shift_norm"]),
        resblock_updown=bool(f["resblock_updown"]),
        use_new_attention_order=bool(f["use_new_attention_order"]),
        use_checkpoint=bool(f["use_checkpoint"]),
    )
    if f["use_fp16"]:
        unet.convert_to_fp16()
    return unet


def small_config(image_size: int = 64, num_channels: int = 32, num_res_blocks: int = 1,
                 attention_resolutions: str = "16", num_head_channels: int = 32, **overrides: Any) -> dict[str, Any]:
    """Flags of a small member of the same architecture family as the 256x256 checkpoints
    (learned sigma, scale-shift norm, resblock up/down, 64-channel-style heads) for CPU tests."""
    return {
        "image_size": image_size, "num_channels": num_channels, "num_res_blocks": num_res_blocks,
        "channel_mult": "", "attention_resolutions": attention_resolutions, "num_heads": 4,
        "num_head_channels": num_head_channels, "num_heads_upsample": -1, "learn_sigma": True,
        "class_cond": False, "dropout": 0.0, "use_scale_shift_norm": True, "resblock_updown": True,
        "use_fp16": False, "use_new_attention_order": False, "use_checkpoint": False, **overrides,
    }


# --------------------------------------------------------------------------- the prior
_AUTOCAST = {None: None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}


class ADMPrior(DiffusionPrior):
    """A DiffusionPrior backed by an ADM UNet: eps = out[:, :3], v = out[:, 3:] (learned range) or None.

    Speed options (all off by default; outputs are cast back to the input dtype):
      autocast: None | "bf16" | "fp16"  mixed precision for the UNet (GroupNorm stays float32).
                Documented tolerance vs float32, max |diff| / max |eps| on the random-weight small model
                (tests/test_adm.py): bf16 <= 5e-2 (measured 2.9e-2 at 32x32, 3.7e-2 at 64x64),
                fp16 <= 1e-2 (measured 3.5e-3, 4.4e-3).
      channels_last: run convolutions in NHWC memory layout (same maths; <= 1e-5, measured 2e-6 / 6e-6).
      compile: torch.compile the UNet (first call compiles, minutes on CPU; measured diff 6e-6 relative).
      checkpointing: activation checkpointing in every ResBlock/attention block (use_checkpoint):
                identical values, less memory, ~1 extra forward per backward pass (wall time only;
                the NFE counters count network evaluations requested by the solver).
    Parameters are frozen: gradients flow to the input only. The network always runs in eval mode.
    """

    def __init__(self, unet: UNet, name: str = "adm", schedule: VPSchedule | None = None,
                 autocast: str | None = None, channels_last: bool = False, compile: bool = False,
                 checkpointing: bool = False) -> None:
        super().__init__((unet.in_channels, unet.image_size, unet.image_size), schedule)
        if autocast not in _AUTOCAST:
            raise ValueError(f"autocast must be one of None, 'bf16', 'fp16'; got {autocast!r}")
        self.name = name
        self.unet = unet.eval().requires_grad_(False)
        self.learn_sigma = unet.out_channels == 2 * unet.in_channels
        self.autocast_dtype = _AUTOCAST[autocast]
        self.channels_last = channels_last
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.set_checkpointing(checkpointing)
        # plain attribute (not a registered submodule): the compiled wrapper shares the UNet's parameters
        net: Callable[[Tensor, Tensor], Tensor] = torch.compile(self.unet) if compile else self.unet
        object.__setattr__(self, "_net", net)

    def set_checkpointing(self, enabled: bool) -> None:
        for m in self.unet.modules():
            if isinstance(m, _Checkpointable):
                m.use_checkpoint = enabled

    def train(self, mode: bool = True) -> "ADMPrior":
        super().train(mode)
        self.unet.eval()
        return self

    def _model(self, x_k: Tensor, k: Tensor) -> tuple[Tensor, Tensor | None]:
        x = x_k.contiguous(memory_format=torch.channels_last) if self.channels_last else x_k
        t = k.to(device=x_k.device, dtype=torch.float32)
        if self.autocast_dtype is None or not _autocast_device(x.device.type):
            out = self._net(x, t)
        else:
            with torch.autocast(x.device.type, dtype=self.autocast_dtype):
                out = self._net(x, t)
        out = out.to(x_k.dtype)
        c = self.image_shape[0]
        return out[:, :c], (out[:, c:] if self.learn_sigma else None)
