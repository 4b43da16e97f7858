"""Small convolutional pyramids: the control encoder (``encoder.kind: conv``) and the pixel decoder's
high-resolution path (``pixel_decoder.conv_path``).

A ViT trained from scratch only sees the image through 14- or 16-pixel patches; a few convolutions
at strides 4..32 give the mask features the local edges and corners a patch token does not carry
(ViT-Adapter's "spatial prior", and "early convolutions help transformers see better"). The same
pyramid, used on its own as the encoder, is the control that tells an architecture problem from a
recipe or evaluation problem: it trains in the same loop and is scored by the same evaluation.

Every level is a strided 3x3 conv (padding 1) followed by residual blocks, so level ``i`` is exactly
the stride-``4 * 2**i`` grid of the input: cell ``j`` is centred on pixel ``s * (j + 0.5)`` for inputs
whose sides are multiples of 32. GroupNorm, not BatchNorm: batches of 2-8 images on a CPU.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

PYRAMID_STRIDES = (4, 8, 16, 32)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (as Mask2Former's pixel decoder), valid for any width."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def conv_norm_relu(in_channels: int, out_channels: int, *, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        group_norm(out_channels), nn.ReLU(),
    )


class BasicBlock(nn.Module):
    """``relu(x + norm(conv(relu(norm(conv(x))))))``: ResNet's basic block, shape-preserving."""

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_norm_relu(channels, channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = group_norm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.norm2(self.conv2(self.conv1(x))))


class ConvPyramid(nn.Module):
    """Image ``(B, in_channels, H, W)`` -> four maps ``(B, widths[i], H / s_i, W / s_i)``, s = 4, 8, 16, 32.

    The stem halves the resolution twice (to stride 4); each later level halves it once more.
    """

    def __init__(self, *, widths: tuple[int, ...], depths: tuple[int, ...], in_channels: int = 3) -> None:
        super().__init__()
        if len(widths) != len(PYRAMID_STRIDES) or len(depths) != len(PYRAMID_STRIDES):
            raise ValueError(f"widths and depths need {len(PYRAMID_STRIDES)} entries, got {widths}, {depths}")
        self.widths = tuple(widths)
        stem_width = max(8, widths[0] // 2)
        self.stem = nn.Sequential(
            conv_norm_relu(in_channels, stem_width, stride=2), conv_norm_relu(stem_width, widths[0], stride=2)
        )
        self.levels = nn.ModuleList()
        for i, (width, depth) in enumerate(zip(widths, depths)):
            down = nn.Identity() if i == 0 else conv_norm_relu(widths[i - 1], width, stride=2)
            self.levels.append(nn.Sequential(down, *(BasicBlock(channels=width) for _ in range(depth))))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.stem(images)
        maps = []
        for level in self.levels:
            x = level(x)
            maps.append(x)
        return maps
