"""The BKSE `KernelWizard` network (Tran et al., "Explore Image Deblurring via Encoded Blur Kernel Space",
CVPR 2021), our implementation for loading the released `GOPRO_wVAE.pth` (operators/nonlinear_blur.py).

Architecture facts from github.com/VinAIResearch/blur-kernel-space-exploring
(models/kernel_encoding/kernel_wizard.py, models/backbones/{resnet,unet_parts}.py, models/arch_util.py) with
the options of options/generate_blur/default.yml (DPS: bkse/options/generate_blur/default.yaml): nf 64,
input_nc 3, front_RBs 10, back_RBs 20, kernel_dim 512, use_vae true, KernelExtractor {norm none, use_sharp
true, n_blocks 4, padding reflect, no dropout}, Adapter {norm none}.

* `feature_extractor` (G's encoder): conv3x3 3->nf, LReLU(0.1), two stride-2 conv3x3 + LReLU (H/4), then
  front_RBs residual blocks without normalisation (x + conv(relu(conv(x)))).
* `adapter` (G): a 5-level U-Net of skip blocks (pix2pix style, norm "none" -> identity, hence convs
  without bias except the outermost transposed conv); the innermost level concatenates the latent kernel
  (B, 512, H/128, W/128) to its features; the outermost ends in Tanh.
* `recon_trunk`: back_RBs residual blocks, two (conv nf->4C, PixelShuffle(2), LReLU) upsamplings, conv
  64->64 + LReLU, conv 64->3; `adaptKernel` adds the input image (global residual).
* `kernel_extractor` (F, the blur-kernel encoder; not used by the operator, present so that the released
  state dict loads strictly): ReflectionPad(3) conv7x7 2nf->nf, five stride-2 conv3x3 up to 2*kernel_dim
  channels, four reflect-padded ResNet blocks.

Module and parameter names equal the released state dict's: the reference's norm "none" layers are
parameter-free placeholders in its nn.Sequential lists, so `nn.Identity` sits at the same indices here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

Tensor = torch.Tensor


@dataclass(frozen=True)
class WizardOptions:
    """options/generate_blur/default.yml of BKSE (the GOPRO_wVAE network)."""

    input_nc: int = 3
    nf: int = 64
    front_rbs: int = 10
    back_rbs: int = 20
    kernel_dim: int = 512
    use_vae: bool = True
    extractor_blocks: int = 4


BKSE_DEFAULT = WizardOptions()
LATENT_STRIDE = 128  # 4 (feature extractor) x 2^5 (U-Net levels): latent spatial size = image size / 128


class PlainResidualBlock(nn.Module):
    """x + conv2(relu(conv1(x))), 3x3 convs with bias, no normalisation (BKSE `ResidualBlock_noBN`)."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class ReflectResnetBlock(nn.Module):
    """x + [pad, conv, -, relu, pad, conv, -](x): reflect padding, no bias, identity norms (BKSE `ResnetBlock`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.Identity(), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


class UnetLevel(nn.Module):
    """One U-Net skip level: cat(up(inner(down(x))), x), except the outermost (no skip, Tanh at the end).

    innermost: down = [LReLU 0.2, conv4x4/2], inner = cat(., latent), up = [ReLU, convT4x4/2, -];
    middle:    down = [LReLU 0.2, conv4x4/2, -], inner = submodule, up = [ReLU, convT4x4/2, -];
    outermost: down = [conv4x4/2], inner = submodule, up = [ReLU, convT4x4/2 (with bias), Tanh].
    """

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None,
                 submodule: "UnetLevel | None" = None, kind: str = "middle") -> None:
        super().__init__()
        input_nc = outer_nc if input_nc is None else input_nc
        self.kind = kind
        if kind not in ("outermost", "middle", "innermost"):
            raise ValueError(f"unknown U-Net level kind {kind!r}")
        if (submodule is None) != (kind == "innermost"):
            raise ValueError(f"a {kind} U-Net level {'takes no' if kind == 'innermost' else 'needs a'} submodule")
        down_conv = nn.Conv2d(input_nc, inner_nc, 4, 2, 1, bias=False)
        up_conv = nn.ConvTranspose2d(2 * inner_nc, outer_nc, 4, 2, 1, bias=kind == "outermost")
        # attribute order = the reference's state-dict order: down, submodule, up
        if kind == "outermost":
            self.down = nn.Sequential(down_conv)
        elif kind == "innermost":
            self.down = nn.Sequential(nn.LeakyReLU(0.2), down_conv)
        else:
            self.down = nn.Sequential(nn.LeakyReLU(0.2), down_conv, nn.Identity())
        if submodule is not None:
            self.submodule = submodule
        last = nn.Tanh() if kind == "outermost" else nn.Identity()
        self.up = nn.Sequential(nn.ReLU(), up_conv, last)

    def forward(self, x: Tensor, latent: Tensor) -> Tensor:
        # LeakyReLU/ReLU are not in place here: the reference's in-place ones give the same values
        inner = self.down(x)
        inner = torch.cat((inner, latent), 1) if self.kind == "innermost" else self.submodule(inner, latent)
        out = self.up(inner)
        return out if self.kind == "outermost" else torch.cat((out, x), 1)


class KernelAdapter(nn.Module):
    """G of the paper: the 5-level U-Net nf -> nf with the latent kernel at its bottleneck."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        level = UnetLevel(8 * nf, 8 * nf, kind="innermost")
        for outer, inner in ((4 * nf, 8 * nf), (2 * nf, 4 * nf), (nf, 2 * nf)):
            level = UnetLevel(outer, inner, submodule=level)
        self.model = UnetLevel(nf, nf, input_nc=nf, submodule=level, kind="outermost")

    def forward(self, features: Tensor, latent: Tensor) -> Tensor:
        return self.model(features, latent)


class KernelExtractor(nn.Module):
    """F of the paper: (sharp features, blurred features) -> latent kernel mean and log-variance (VAE)."""

    def __init__(self, opt: WizardOptions) -> None:
        super().__init__()
        nf, out_nc = opt.nf, opt.kernel_dim * (2 if opt.use_vae else 1)
        self.kernel_dim, self.use_vae = opt.kernel_dim, opt.use_vae
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(2 * nf, nf, 7, bias=False), nn.Identity(), nn.ReLU()]
        for i in range(5):
            layers += [nn.Conv2d(min(nf * 2 ** i, out_nc), min(nf * 2 ** (i + 1), out_nc), 3, 2, 1, bias=False),
                       nn.Identity(), nn.ReLU()]
        layers += [ReflectResnetBlock(out_nc) for _ in range(opt.extractor_blocks)]
        self.model = nn.Sequential(*layers)

    def forward(self, sharp: Tensor, blur: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(torch.cat((sharp, blur), 1))
        if self.use_vae:
            return out[:, : self.kernel_dim], out[:, self.kernel_dim:]
        return out, torch.zeros_like(out)


class KernelWizard(nn.Module):
    """BKSE KernelWizard: `adaptKernel(sharp, latent)` blurs a [0, 1] image with an encoded kernel."""

    def __init__(self, opt: WizardOptions = BKSE_DEFAULT) -> None:
        super().__init__()
        nf = opt.nf
        lrelu = nn.LeakyReLU(0.1)
        self.feature_extractor = nn.Sequential(
            nn.Conv2d(opt.input_nc, nf, 3, 1, 1), lrelu, nn.Conv2d(nf, nf, 3, 2, 1), lrelu,
            nn.Conv2d(nf, nf, 3, 2, 1), lrelu, *[PlainResidualBlock(nf) for _ in range(opt.front_rbs)])
        self.kernel_extractor = KernelExtractor(opt)
        self.adapter = KernelAdapter(nf)
        self.recon_trunk = nn.Sequential(
            *[PlainResidualBlock(nf) for _ in range(opt.back_rbs)],
            nn.Conv2d(nf, 4 * nf, 3, 1, 1), nn.PixelShuffle(2), lrelu,
            nn.Conv2d(nf, 4 * 64, 3, 1, 1), nn.PixelShuffle(2), lrelu,
            nn.Conv2d(64, 64, 3, 1, 1), lrelu, nn.Conv2d(64, opt.input_nc, 3, 1, 1))

    def adaptKernel(self, sharp: Tensor, latent: Tensor) -> Tensor:  # noqa: N802 (the reference's name)
        """Blur `sharp` (B, 3, H, W) in [0, 1] with latent kernel(s) (B or 1, 512, H/128, W/128)."""
        if latent.shape[0] != sharp.shape[0]:
            latent = latent.expand(sharp.shape[0], *latent.shape[1:])
        return sharp + self.recon_trunk(self.adapter(self.feature_extractor(sharp), latent))

    def forward(self, sharp: Tensor, blur: Tensor) -> tuple[Tensor, Tensor]:
        """The kernel encoder F (training-time use): latent mean and log-variance of the blur."""
        return self.kernel_extractor(self.feature_extractor(sharp), self.feature_extractor(blur))
