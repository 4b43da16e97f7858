"""Reading masks at continuous points, and choosing the points where a mask prediction is least sure.

Mask2Former trains its mask terms on a few thousand points per mask instead of every pixel: the
loss costs O(points) instead of O(H*W), and importance sampling spends most points on the
boundary, where the prediction is uncertain and the gradient is informative. Coordinates are
normalised ``(x, y)`` in ``[0, 1]`` (x along the width), so the same points read a stride-4
prediction and a full-resolution target mask consistently whatever their sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(inputs: Tensor, coords: Tensor) -> Tensor:
    """Bilinearly read ``inputs`` at normalised points.

    Args:
        inputs: ``(N, C, H, W)`` float maps (cast to float if given bool/uint8 masks).
        coords: ``(N, P, 2)`` points, ``(x, y)`` in ``[0, 1]``; ``0`` and ``1`` are the outer edges
            of the first and last pixel (``align_corners=False`` convention); pixel ``j`` of ``W``
            has its centre at ``x = (j + 0.5) / W``.

    Returns:
        ``(N, C, P)`` values at the points.
    """
    if inputs.dim() != 4 or coords.dim() != 3 or coords.shape[-1] != 2:
        raise ValueError(f"point_sample wants (N,C,H,W) and (N,P,2), got {tuple(inputs.shape)} "
                         f"and {tuple(coords.shape)}")
    if not inputs.is_floating_point():
        inputs = inputs.float()
    # grid_sample reads a (N, H_out, W_out, 2) grid in [-1, 1]; one row of P points is enough.
    grid = (coords.to(inputs.dtype) * 2.0 - 1.0).unsqueeze(1)
    # "border": a point in the outer half-pixel reads the edge pixel instead of fading towards an
    # imaginary zero outside the image, which would make a mask touching the border look soft.
    sampled = F.grid_sample(inputs, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled.squeeze(2)


def uncertainty(logits: Tensor) -> Tensor:
    """Uncertainty of mask logits: ``-|logit|``, highest (0) on the decision boundary; same shape."""
    return -logits.abs()


def uncertain_points(
    logits: Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick ``num_points`` points per mask, biased towards where ``logits`` are closest to zero.

    Draw ``num_points * oversample_ratio`` uniform candidates, keep the
    ``importance_sample_ratio * num_points`` most uncertain ones, and fill the rest with fresh
    uniform points so that confidently wrong regions are still visited.

    Args:
        logits: ``(N, 1, H, W)`` mask logits (their values only steer the choice; no gradient).
        num_points: points per mask ``P``.
        oversample_ratio: candidates per kept point, ``>= 1``.
        importance_sample_ratio: share of the ``P`` points chosen by uncertainty, in ``[0, 1]``.
        generator: random source; ``None`` uses torch's global RNG (so ``torch.manual_seed`` holds).

    Returns:
        ``(N, P, 2)`` coordinates ``(x, y)`` in ``[0, 1]`` on ``logits``' device and float dtype.
    """
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"uncertain_points wants (N, 1, H, W) logits, got {tuple(logits.shape)}")
    if num_points < 1 or oversample_ratio < 1.0 or not 0.0 <= importance_sample_ratio <= 1.0:
        raise ValueError("need num_points >= 1, oversample_ratio >= 1, importance_sample_ratio in [0, 1]")
    n = logits.shape[0]
    dtype = logits.dtype if logits.is_floating_point() else torch.float32
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    with torch.no_grad():
        candidates = _uniform(n, num_candidates, logits, dtype, generator)
        scores = uncertainty(point_sample(logits.detach(), candidates))[:, 0, :]  # (N, candidates)
        top = scores.topk(num_uncertain, dim=1).indices  # (N, num_uncertain)
        chosen = candidates.gather(1, top.unsqueeze(-1).expand(-1, -1, 2))
        fresh = _uniform(n, num_random, logits, dtype, generator)
        return torch.cat([chosen, fresh], dim=1)


def _uniform(n: int, p: int, like: Tensor, dtype: torch.dtype, generator: torch.Generator | None) -> Tensor:
    """``(n, p, 2)`` uniform points in ``[0, 1)``; drawn on CPU when a CPU generator is given."""
    device = like.device if generator is None else generator.device
    return torch.rand(n, p, 2, generator=generator, device=device, dtype=dtype).to(like.device)
