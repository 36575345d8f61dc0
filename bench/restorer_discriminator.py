"""The discriminator of HYPIR training (spec hypir.md §2.2-§2.3, §6.5): a frozen pretrained feature
backbone, trainable spectral-norm heads on several feature levels plus one pooled head, and the
multi-level BCE loss with one-sided label smoothing.

Backbones (named, recorded in the adapter metadata):
* "lpips-vgg16": the ImageNet VGG16 `features` shipped offline for LPIPS (bench/lpips_weights.py), max
  pooling as torchvision; spatial levels relu2_2 (128 ch), relu3_3 (256), relu4_3 (512); pooled level =
  global average of relu5_3 (512). Input [-1, 1] -> [0, 1] -> ImageNet normalisation. [ours]: HYPIR's
  backbone is OpenCLIP ConvNeXt-XXL (0.85 B parameters), not available offline; this is option 2 of §6.5.
* "tiny": a frozen, randomly initialised 3-level conv stack (seeded), for CPU tests of the mechanics only.
Gradients flow through the frozen backbone to the generator; only the heads train.

Heads (§2.2): per spatial level blur(stride 1) -> SN conv3x3 (stride 2, no padding) -> LeakyReLU(0.2) ->
blur -> SN conv1x1 to 1 channel (stride 2) = a patch-logit map; pooled: SN Linear -> LeakyReLU(0.2) ->
SN Linear to 1 = one logit.

Loss (§2.3, vision-aided `multilevel_loss(alpha=0.8)`): per level BCE(l, tau) = tau softplus(-l) +
(1 - tau) softplus(l), averaged over positions, summed over levels, averaged over the batch. D: tau = 0.8
on real, tau = 0 on fake; G: tau = 0.8 on fake.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

Tensor = torch.Tensor
BACKBONES = ("lpips-vgg16", "tiny")
REAL_TARGET = 0.8  # one-sided label smoothing of the vision-aided loss (alpha = 0.8)


def bce_multilevel(logits: list[Tensor], target: float) -> Tensor:
    """sum over levels of mean over positions of tau sp(-l) + (1 - tau) sp(l), then mean over the batch."""
    total = None
    for level in logits:
        flat = level.reshape(level.shape[0], -1).float()
        per = target * F.softplus(-flat) + (1 - target) * F.softplus(flat)
        term = per.mean(1)
        total = term if total is None else total + term
    assert total is not None
    return total.mean()


class Blur(nn.Module):
    """3x3 binomial blur [1,2,1]^T [1,2,1] / 16, stride 1, replicate padding (a stride-1 blur-pool)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None] / 16).expand(channels, 1, 3, 3).contiguous())
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.kernel.to(x.dtype), groups=self.channels)


class SpatialHead(nn.Module):
    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(Blur(channels), spectral_norm(nn.Conv2d(channels, width, 3, stride=2)),
                                 nn.LeakyReLU(0.2), Blur(width), spectral_norm(nn.Conv2d(width, 1, 1, stride=2)))

    def forward(self, f: Tensor) -> Tensor:
        return self.net(f)


class PooledHead(nn.Module):
    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(spectral_norm(nn.Linear(channels, width)), nn.LeakyReLU(0.2),
                                 spectral_norm(nn.Linear(width, 1)))

    def forward(self, v: Tensor) -> Tensor:
        return self.net(v)


VGG16_LAYOUT = (64, 64, "pool", 128, 128, "pool", 256, 256, 256, "pool", 512, 512, 512, "pool", 512, 512, 512)


class VGGFeatures(nn.Module):
    """Frozen VGG16 features (LPIPS offline weights): relu2_2, relu3_3, relu4_3 maps and pooled relu5_3."""

    TAPS = (8, 15, 22)
    LAST = 29
    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)
    channels = (128, 256, 512)
    pooled_channels = 512

    def __init__(self) -> None:
        super().__init__()
        from bench import lpips_weights
        layers: list[nn.Module] = []
        c = 3
        for item in VGG16_LAYOUT:
            if item == "pool":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, item, 3, padding=1), nn.ReLU()]
                c = item
        self.features = nn.Sequential(*layers)
        self.features.load_state_dict(lpips_weights.load_features("vgg"), strict=True)
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        h = ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        maps = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.TAPS:
                maps.append(h)
            if i == self.LAST:
                break
        return maps, h.mean((2, 3))


class TinyFeatures(nn.Module):
    """Frozen random 3-level conv stack (tests only): 8, 16, 32 channels, pooled 32."""

    channels = (8, 16, 32)
    pooled_channels = 32

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList()
        c = 3
        for out in self.channels:
            conv = nn.Conv2d(c, out, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / (3 * c) ** 0.5)
                conv.bias.zero_()
            self.convs.append(conv)
            c = out

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        maps, h = [], x
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
            maps.append(h)
        return maps, h.mean((2, 3))


class Discriminator(nn.Module):
    """Frozen backbone + trainable spectral-norm heads; `forward(x) -> list of logits (one per level)`."""

    def __init__(self, backbone: str = "lpips-vgg16", width: int = 512, seed: int = 0) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown discriminator backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
        self.backbone_name = backbone
        self.backbone = VGGFeatures() if backbone == "lpips-vgg16" else TinyFeatures(seed)
        self.backbone.eval().requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.heads = nn.ModuleList([SpatialHead(c, width) for c in self.backbone.channels])
            self.pooled = PooledHead(self.backbone.pooled_channels, width)

    def train(self, mode: bool = True) -> "Discriminator":
        super().train(mode)
        self.backbone.eval()
        return self

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, x: Tensor) -> list[Tensor]:
        maps, pooled = self.backbone(x)
        return [head(f) for head, f in zip(self.heads, maps)] + [self.pooled(pooled)]

    def describe(self) -> str:
        return f"{self.backbone_name} (frozen) + spectral-norm heads width {self.heads[0].net[1].out_channels}"
