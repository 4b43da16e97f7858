"""DPT-style pixel decoder: four ViT taps -> strides 4/8/16/32 -> top-down RefineNet fusion.

A ViT has one resolution (the patch grid, ``H // 14`` for DINOv2), so the "reassemble" step
manufactures a pyramid from it: each tap is projected (1x1) to its own width, resampled with a
transposed conv (x4, x2), identity, or a strided conv (/2), then resized bilinearly to the exact
stride-4/8/16/32 size of the input (the 14-pixel grid is not a power-of-two fraction of ``H``).
Fusion runs coarse to fine like DPT / RefineNet: residual conv units on the lateral and on the
sum, upsampling to the next level's exact size. Every size is a Python int taken from the
configured input size, so the exported graph has static shapes and no shape arithmetic.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from sskd_deploy.model_config import PixelDecoderConfig

STRIDES = (4, 8, 16, 32)  # output stride of each reassembled tap, finest first


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (as Mask2Former's pixel decoder), valid for any width."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _resampler(index: int, channels: int) -> nn.Module:
    """Tap ``index`` (0 = shallowest) goes from the patch grid (stride 14) to about ``STRIDES[index]``."""
    if index == 0:
        return nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=4)
    if index == 1:
        return nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
    if index == 2:
        return nn.Identity()
    return nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)


class ResidualConvUnit(nn.Module):
    """Pre-activation residual block of RefineNet/DPT: ``x + conv(relu(conv(relu(x))))``, shape-preserving."""

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # Not in-place: the un-activated input is the residual.
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """One level of the top-down path: ``proj(rcu_out(rcu_lateral(lateral) + top))``.

    Every tensor is ``(B, dim, h, w)`` at this level's size; ``top`` is the coarser level, already resized.
    """

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.rcu_lateral = ResidualConvUnit(channels=channels)
        self.rcu_out = ResidualConvUnit(channels=channels)
        self.proj = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, lateral: Tensor, top: Tensor | None = None) -> Tensor:
        x = self.rcu_lateral(lateral)
        if top is not None:  # structural (the coarsest level has no coarser input), not data-dependent
            x = x + top
        return self.proj(self.rcu_out(x))


class Reassemble(nn.Module):
    """Tap ``(B, hidden, gh, gw)`` -> ``(B, dim, H/stride, W/stride)`` at a fixed output size."""

    def __init__(
        self, *, index: int, in_channels: int, channels: int, dim: int, size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.size = size
        self.project = nn.Conv2d(in_channels, channels, kernel_size=1)
        self.resample = _resampler(index, channels)
        # DPT's 3x3 "layer_rn" to the common width; GroupNorm because the four taps come at very
        # different scales (deeper ViT blocks have larger activations) and fusion adds them.
        self.to_dim = nn.Sequential(
            nn.Conv2d(channels, dim, kernel_size=3, padding=1, bias=False), group_norm(dim)
        )

    def forward(self, tap: Tensor) -> Tensor:
        x = self.resample(self.project(tap))
        x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.to_dim(x)


class DPTPixelDecoder(nn.Module):
    """Four encoder taps -> stride-4 mask features and the stride 32/16/8 maps for the transformer decoder.

    Args:
        config: widths (``reassemble_dims`` per tap, fusion ``dim``, ``mask_dim``).
        in_channels: encoder hidden size (channels of every tap).
        input_size: ``(H, W)`` of the network input, multiples of 32; fixes every output size.
    """

    def __init__(self, *, config: PixelDecoderConfig, in_channels: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        height, width = input_size
        if height % 32 or width % 32:
            raise ValueError(f"input_size {input_size} must be multiples of 32")
        self.config = config
        self.sizes = [(height // s, width // s) for s in STRIDES]  # finest first
        self.reassemble = nn.ModuleList(
            Reassemble(index=i, in_channels=in_channels, channels=c, dim=config.dim, size=self.sizes[i])
            for i, c in enumerate(config.reassemble_dims)
        )
        self.fusion = nn.ModuleList(FusionBlock(channels=config.dim) for _ in STRIDES)  # finest first
        # Mask2Former's mask head: 3x3 conv + norm + ReLU, then a linear 1x1 to the embedding width.
        self.mask_head = nn.Sequential(
            nn.Conv2d(config.dim, config.dim, kernel_size=3, padding=1, bias=False),
            group_norm(config.dim),
            nn.ReLU(),
            nn.Conv2d(config.dim, config.mask_dim, kernel_size=1),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_uniform_(module.weight, a=1)  # Detectron2's c2_xavier_fill
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, taps: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Decode the taps.

        Args:
            taps: four ``(B, in_channels, H // p, W // p)`` maps, shallowest first.
        Returns:
            ``mask_features`` ``(B, mask_dim, H/4, W/4)`` and ``multi_scale``: the fused maps at
            strides 32, 16, 8 (coarse first, the transformer decoder's order), each ``(B, dim, H/s, W/s)``.
        """
        if len(taps) != len(STRIDES):
            raise ValueError(f"expected {len(STRIDES)} encoder taps, got {len(taps)}")
        laterals = [block(tap) for block, tap in zip(self.reassemble, taps)]
        fused: list[Tensor] = [self.fusion[3](laterals[3])]  # stride 32
        for level in (2, 1, 0):
            top = F.interpolate(fused[-1], size=self.sizes[level], mode="bilinear", align_corners=False)
            fused.append(self.fusion[level](laterals[level], top))
        # fused is now [s32, s16, s8, s4]
        return self.mask_head(fused[3]), fused[:3]
