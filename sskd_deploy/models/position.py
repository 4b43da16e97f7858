"""Fixed 2-D sine positional encodings for the transformer decoder's memory.

The decoder attends over feature maps whose sizes are fixed by the model config, so the
encodings are computed once at construction (as buffers) instead of in every forward pass:
the exported graph then holds them as constants and needs no cumulative-sum ops.

Layout follows DETR / Mask2Former (``normalize=True``): the first half of the channels encodes
the row, the second half the column; within each half, channel ``i`` is ``sin`` (even ``i``) or
``cos`` (odd ``i``) of the coordinate times the frequency ``temperature ** -(2 * (i // 2) / n)``.
Coordinates are pixel centres normalised to ``(0, 2*pi)``, so maps of different sizes share a
scale and the same relative position gets the same code at every level.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _axis_encoding(length: int, channels: int, temperature: float) -> Tensor:
    """Encodings of ``length`` normalised positions along one axis: ``(length, channels)``."""
    # (k - 0.5) / length: centres of the cells, so the first and last rows are symmetric.
    position = (torch.arange(1, length + 1, dtype=torch.float64) - 0.5) / length * (2 * math.pi)
    index = torch.arange(channels, dtype=torch.float64)
    frequency = temperature ** (-2.0 * torch.div(index, 2, rounding_mode="floor") / channels)
    angle = position[:, None] * frequency[None, :]  # (length, channels)
    return torch.where(index.remainder(2) == 0, angle.sin(), angle.cos())


def sine_position_encoding(height: int, width: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """2-D sine encoding of a ``height x width`` grid.

    Args:
        height, width: grid size in cells.
        dim: channels of the encoding; rows get ``dim // 2`` channels, columns the rest.
        temperature: the longest wavelength, as in "Attention is all you need".
    Returns:
        float32 ``(dim, height, width)``.
    """
    if height < 1 or width < 1 or dim < 2:
        raise ValueError(f"need a non-empty grid and dim >= 2, got {height}x{width} and dim {dim}")
    row_channels = dim // 2
    rows = _axis_encoding(height, row_channels, temperature)  # (H, dim//2)
    cols = _axis_encoding(width, dim - row_channels, temperature)  # (W, dim - dim//2)
    grid = torch.cat(
        [rows[:, None, :].expand(height, width, -1), cols[None, :, :].expand(height, width, -1)], dim=-1
    )
    return grid.permute(2, 0, 1).contiguous().to(torch.float32)


def flat_sine_position_encoding(height: int, width: int, dim: int) -> Tensor:
    """The same encoding as a token sequence in row-major order: ``(1, height * width, dim)``."""
    return sine_position_encoding(height, width, dim).flatten(1).transpose(0, 1).unsqueeze(0).contiguous()
