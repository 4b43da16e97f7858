"""DPT-style pixel decoder: four encoder taps -> strides 4/8/16/32 -> top-down RefineNet fusion.

A ViT has one resolution (the patch grid), so the "reassemble" step manufactures a pyramid from it:
each tap is projected (1x1) to its own width, resampled by a power of two (transposed conv x4 / x2,
identity, or a strided conv /2 whose kernel tiles its input exactly), then put on the exact
stride-4/8/16/32 grid of the input by where its cells really are in the image.

Geometry. A map of pitch ``q`` (image pixels per cell, cell ``j`` covering ``[q j, q (j + 1))``, as
the encoder's padded token grid does) is resampled onto the stride-``s`` grid (cell ``i`` centred on
``s (i + 0.5)``) with half-pixel bilinear interpolation whose ratio is exactly ``s / q``. That needs
an input of ``m_in`` cells resized to ``m_out`` with ``m_in / m_out = s / q``: the map is padded (cells
beyond the image) or cropped to ``m_in``, resized to ``m_out >= H / s``, and cropped to ``H / s``
(:func:`aligned_plan`). Patch 14 at 192x256 therefore lands every feature where its pixels are,
instead of stretching a 182x252-pixel grid over the image. Convolutional taps (``encoder.kind:
conv``) already sit on the stride grid and pass through unchanged.

Fusion runs coarse to fine like DPT / RefineNet: residual conv units on the lateral and on the sum,
upsampling x2 to the next level (half-pixel bilinear between stride grids is exact). With
``conv_path`` a convolutional pyramid on the image adds its stride-4..32 maps to the laterals.
Every size is a Python int taken from the configured input size, so the exported graph has static
shapes and no shape arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch.nn.functional as F
from torch import Tensor, nn

from sskd_deploy.config.model import PixelDecoderConfig
from sskd_deploy.models.conv import ConvPyramid, group_norm
from sskd_deploy.models.position import sine_position_encoding

__all__ = ["STRIDES", "AlignedPlan", "DPTPixelDecoder", "aligned_plan", "group_norm", "resample_factor"]

STRIDES = (4, 8, 16, 32)  # output stride of each reassembled tap, finest first


def resample_factor(pitch: float, stride: int) -> Fraction:
    """The power of two nearest to ``pitch / stride`` (x4 for patch 14 -> stride 4, 1/2 for -> stride 32)."""
    return Fraction(2) ** round(math.log2(pitch / stride))


@dataclass(frozen=True)
class AlignedPlan:
    """Static sizes of one axis of an aligned resample: pad/crop ``cells`` -> ``m_in``, resize -> ``m_out``,
    keep the first ``target``."""

    cells: int
    m_in: int
    m_out: int
    target: int


def aligned_plan(cells: int, pitch: Fraction, stride: int, target: int) -> AlignedPlan:
    """Sizes that resample a ``cells``-long axis of pitch ``pitch`` onto ``target`` cells of ``stride``.

    ``m_in / m_out == stride / pitch`` exactly, ``m_out`` is the smallest such size >= ``target``;
    raises ``ValueError`` when the source cells do not cover the ``target * stride`` pixels.
    """
    if cells * pitch < target * stride:
        raise ValueError(f"{cells} cells of pitch {pitch} cover {float(cells * pitch)} px, "
                         f"fewer than the {target * stride} px of {target} stride-{stride} cells")
    ratio = Fraction(stride) / Fraction(pitch)  # source cells per output cell
    m_out = -(-target // ratio.denominator) * ratio.denominator
    return AlignedPlan(cells=cells, m_in=int(m_out * ratio), m_out=m_out, target=target)


def _resampler(factor: Fraction, channels: int) -> nn.Module:
    if factor > 1:
        return nn.ConvTranspose2d(channels, channels, kernel_size=int(factor), stride=int(factor))
    if factor == 1:
        return nn.Identity()
    step = int(1 / factor)  # kernel == stride: output cell j covers exactly input cells [step j, step (j + 1))
    return nn.Conv2d(channels, channels, kernel_size=step, stride=step)


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
    ``rcus`` < 2 drops ``rcu_lateral`` (1) or both units (0): at stride 4 they cost more than the rest
    of a small decoder together, and the mask head's own 3x3 conv follows anyway.
    """

    def __init__(self, *, channels: int, rcus: int = 2) -> None:
        super().__init__()
        if rcus not in (0, 1, 2):
            raise ValueError(f"rcus must be 0, 1 or 2, got {rcus}")
        self.rcu_lateral = ResidualConvUnit(channels=channels) if rcus == 2 else nn.Identity()
        self.rcu_out = ResidualConvUnit(channels=channels) if rcus >= 1 else nn.Identity()
        self.proj = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, lateral: Tensor, top: Tensor | None = None) -> Tensor:
        x = self.rcu_lateral(lateral)
        if top is not None:  # structural (the coarsest level has no coarser input), not data-dependent
            x = x + top
        return self.proj(self.rcu_out(x))


class Reassemble(nn.Module):
    """Tap ``(B, in_channels, gh, gw)`` of pitch ``pitch`` -> ``(B, dim, H/stride, W/stride)``, aligned."""

    def __init__(
        self, *, pitch: int, stride: int, grid: tuple[int, int], in_channels: int, channels: int, dim: int,
        size: tuple[int, int],
    ) -> None:
        super().__init__()
        self.size = size
        factor = resample_factor(pitch, stride)
        self.project = nn.Conv2d(in_channels, channels, kernel_size=1)
        self.resample = _resampler(factor, channels)
        self.down = int(1 / factor) if factor < 1 else 1
        # cells after the resampler (a strided conv needs whole windows: the grid is padded to them)
        cells = [-(-g // self.down) if factor < 1 else int(g * factor) for g in grid]
        self.pad_in = [c * self.down - g for c, g in zip(cells, grid)] if factor < 1 else [0, 0]
        self.plans = [aligned_plan(c, Fraction(pitch) / factor, stride, t) for c, t in zip(cells, size)]
        # DPT's 3x3 "layer_rn" to the common width; GroupNorm because the four taps come at very
        # different scales (deeper ViT blocks have larger activations) and fusion adds them.
        self.to_dim = nn.Sequential(
            nn.Conv2d(channels, dim, kernel_size=3, padding=1, bias=False), group_norm(dim)
        )

    def forward(self, tap: Tensor) -> Tensor:
        return self.to_dim(self.place(self.project(tap)))

    def place(self, x: Tensor) -> Tensor:
        """Resample a projected tap ``(B, channels, gh, gw)`` onto the stride grid ``(B, channels, *size)``."""
        if any(self.pad_in):
            x = F.pad(x, (0, self.pad_in[1], 0, self.pad_in[0]))
        x = self.resample(x)
        ph, pw = self.plans
        # pad (zero cells lie beyond the image) or crop to m_in, resize by exactly stride / pitch, crop
        x = F.pad(x, (0, pw.m_in - pw.cells, 0, ph.m_in - ph.cells))
        if (ph.m_in, pw.m_in) != (ph.m_out, pw.m_out):
            x = F.interpolate(x, size=(ph.m_out, pw.m_out), mode="bilinear", align_corners=False)
        return x[:, :, : ph.target, : pw.target]


class ConvPath(nn.Module):
    """The high-resolution branch: image -> conv pyramid -> four ``(B, dim, H/s, W/s)`` maps (1x1 + norm)."""

    def __init__(self, *, widths: tuple[int, ...], depths: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.pyramid = ConvPyramid(widths=widths, depths=depths)
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(w, dim, kernel_size=1, bias=False), group_norm(dim)) for w in widths
        )

    def forward(self, image: Tensor) -> list[Tensor]:
        return [proj(x) for proj, x in zip(self.proj, self.pyramid(image))]


class DPTPixelDecoder(nn.Module):
    """Four encoder taps -> stride-4 mask features and the stride 32/16/8 maps for the transformer decoder.

    Args:
        config: widths (``reassemble_dims`` per tap, fusion ``dim``, ``mask_dim``), the optional conv path.
        in_channels: channels of each tap (an int: the same for all four, as a ViT's).
        input_size: ``(H, W)`` of the network input, multiples of 32; fixes every output size.
        tap_strides: image pixels per cell of each tap (the ViT's patch size for all four; the
            default 14 is DINOv2's). Each tap's grid is ``ceil(H / stride)`` x ``ceil(W / stride)``.
    """

    def __init__(
        self, *, config: PixelDecoderConfig, in_channels: int | tuple[int, ...], input_size: tuple[int, int],
        tap_strides: tuple[int, ...] = (14, 14, 14, 14),
    ) -> None:
        super().__init__()
        height, width = input_size
        if height % 32 or width % 32:
            raise ValueError(f"input_size {input_size} must be multiples of 32")
        if len(tap_strides) != len(STRIDES):
            raise ValueError(f"expected {len(STRIDES)} tap strides, got {tap_strides}")
        channels_in = (in_channels,) * len(STRIDES) if isinstance(in_channels, int) else tuple(in_channels)
        self.config = config
        self.sizes = [(height // s, width // s) for s in STRIDES]  # finest first
        self.reassemble = nn.ModuleList(
            Reassemble(pitch=pitch, stride=stride, grid=(-(-height // pitch), -(-width // pitch)),
                       in_channels=c_in, channels=c, dim=config.dim, size=size)
            for pitch, stride, c_in, c, size in zip(tap_strides, STRIDES, channels_in, config.reassemble_dims,
                                                     self.sizes)
        )
        self.fusion = nn.ModuleList(  # finest first
            FusionBlock(channels=config.dim, rcus=config.stride4_rcus if stride == 4 else 2) for stride in STRIDES
        )
        # Mask2Former's mask head: 3x3 conv + norm + ReLU, then a linear 1x1 to the embedding width.
        self.mask_head = nn.Sequential(
            nn.Conv2d(config.dim, config.dim, kernel_size=3, padding=1, bias=False),
            group_norm(config.dim),
            nn.ReLU(),
            nn.Conv2d(config.dim, config.mask_dim, kernel_size=1),
        )
        if config.mask_position:
            # A query's mask is a dot product with these features: without a position code they can only
            # tell two objects of the same look apart by context (SOLO's CoordConv, CondInst's coordinates).
            position = sine_position_encoding(*self.sizes[0], config.dim)[None]
            self.register_buffer("mask_position", position, persistent=False)
        else:
            self.mask_position = None
        self._init_weights()
        # built after the init above: the pyramid keeps its own (ResNet) initialisation
        self.conv_path = ConvPath(widths=config.conv_path_widths, depths=config.conv_path_depths,
                                  dim=config.dim) if config.conv_path else None

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_uniform_(module.weight, a=1)  # Detectron2's c2_xavier_fill
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, taps: list[Tensor], image: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """Decode the taps.

        Args:
            taps: four maps ``(B, C_i, ceil(H / p_i), ceil(W / p_i))``, shallowest first.
            image: the normalised input ``(B, 3, H, W)``; required with ``conv_path``, ignored otherwise.
        Returns:
            ``mask_features`` ``(B, mask_dim, H/4, W/4)`` and ``multi_scale``: the fused maps at
            strides 32, 16, 8 (coarse first, the transformer decoder's order), each ``(B, dim, H/s, W/s)``.
        """
        if len(taps) != len(STRIDES):
            raise ValueError(f"expected {len(STRIDES)} encoder taps, got {len(taps)}")
        laterals = [block(tap) for block, tap in zip(self.reassemble, taps)]
        if self.conv_path is not None:
            if image is None:
                raise ValueError("pixel_decoder.conv_path needs the input image")
            laterals = [lateral + prior for lateral, prior in zip(laterals, self.conv_path(image))]
        fused: list[Tensor] = [self.fusion[3](laterals[3])]  # stride 32
        for level in (2, 1, 0):
            top = F.interpolate(fused[-1], size=self.sizes[level], mode="bilinear", align_corners=False)
            fused.append(self.fusion[level](laterals[level], top))
        # fused is now [s32, s16, s8, s4]
        finest = fused[3] if self.mask_position is None else fused[3] + self.mask_position
        return self.mask_head(finest), fused[:3]
