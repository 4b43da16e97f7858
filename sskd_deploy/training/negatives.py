"""Prediction-guided negative sampling for the pixel contrastive loss (METHOD.md section 4).

The model's own detached predictions on the weak view give every embedding pixel a descriptor
``y~``: its (L2-normalised) distribution over the K queries, fused with the expected class
distribution at that pixel. Two pixels whose descriptors agree are probably the same instance, so a
candidate negative is weighted ``w = max(0, 1 - <y~_anchor, y~_candidate>)`` and drawn with
probability proportional to ``w`` (Gumbel-top-k, without replacement). Variants for the ablation:
``uniform`` (every other pixel weight 1), ``mask`` (query part only), ``class`` (class part only),
``fused`` (both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SAMPLING_VARIANTS = ("uniform", "mask", "class", "fused")


def _mask_logits_on_grid(
    pred_masks: Tensor, size: tuple[int, int], patch_size: int | None, mask_stride: int
) -> Tensor:
    """Mask logits ``(B, K, H4, W4)`` bilinearly sampled at the embedding grid -> ``(B, K, h, w)``.

    With ``patch_size`` the samples sit at the patch centres ``patch * (i + 0.5)`` in image pixels:
    a ViT grid is ``floor(H / patch)`` cells and covers only the top-left ``patch * h`` rows, so
    resizing the whole mask map onto it would drift by up to a patch at the far edge. Without it the
    whole map is resized (both maps assumed to span the same image area).
    """
    if patch_size is None:
        return F.interpolate(pred_masks, size=size, mode="bilinear", align_corners=False)
    (h, w), (mh, mw) = size, pred_masks.shape[-2:]
    device = pred_masks.device
    # Continuous mask-map coordinates (pixel i centred at i + 0.5), normalised for align_corners=False.
    ys = (torch.arange(h, device=device) + 0.5) * patch_size / mask_stride * 2 / mh - 1
    xs = (torch.arange(w, device=device) + 0.5) * patch_size / mask_stride * 2 / mw - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
    grid = grid.to(pred_masks.dtype).expand(pred_masks.shape[0], h, w, 2)
    return F.grid_sample(pred_masks, grid, mode="bilinear", padding_mode="border", align_corners=False)


@torch.no_grad()
def sampling_embedding(
    pred_logits: Tensor, pred_masks: Tensor, size: tuple[int, int], variant: str = "fused", *,
    patch_size: int | None = None, mask_stride: int = 4,
) -> Tensor:
    """The sampling descriptor ``y~`` of every embedding pixel: ``(B, h * w, D')``, no gradient.

    Args:
        pred_logits: ``(B, K, C+1)`` class logits (last = no-object).
        pred_masks: ``(B, K, H4, W4)`` mask logits at stride ``mask_stride``.
        size: the embedding grid ``(h, w)``; pixels are flattened row-major.
        variant: ``fused`` -> ``[P_m, F_c]`` (``D' = K + C + 1``), ``mask`` -> ``P_m`` (``K``),
            ``class`` -> ``F_c`` (``C + 1``), each L2-normalised; ``uniform`` -> zeros ``(D' = 1)``,
            which makes every weight ``1 - 0 = 1``.
        patch_size: image pixels per grid cell (see :func:`_mask_logits_on_grid`); ``None`` resizes.

    ``P_m[b, k, p]`` is the softmax over queries of the mask logits at ``p``, ``P_c[b, k]`` the
    softmax over classes of query ``k``, and ``F_c[b, p] = sum_k P_m[b, k, p] P_c[b, k]``.
    """
    if variant not in SAMPLING_VARIANTS:
        raise ValueError(f"sampling variant must be one of {SAMPLING_VARIANTS}, got {variant!r}")
    batch, h, w = pred_masks.shape[0], *size
    if variant == "uniform":
        return pred_masks.new_zeros(batch, h * w, 1, dtype=torch.float32)
    logits = _mask_logits_on_grid(pred_masks.detach().float(), size, patch_size, mask_stride)
    p_mask = logits.flatten(2).softmax(dim=1).transpose(1, 2)  # (B, h*w, K)
    parts = []
    if variant in ("mask", "fused"):
        parts.append(p_mask)
    if variant in ("class", "fused"):
        p_class = pred_logits.detach().float().softmax(dim=-1)  # (B, K, C+1)
        parts.append(torch.bmm(p_mask, p_class))  # (B, h*w, C+1): expected class distribution
    return F.normalize(torch.cat(parts, dim=-1), dim=-1)


def negative_weights(y_anchor: Tensor, y_pool: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Sampling weights ``max(0, 1 - <y~_a, y~_n>)``: ``(A, D')`` x ``(N, D')`` -> ``(A, N)``.

    Weights below ``eps`` are set to exactly 0: two pixels with identical descriptors give
    ``1 - <y, y>`` of a few float ulps instead of 0, and they must never be drawn as negatives.
    """
    weights = (1.0 - y_anchor.float() @ y_pool.float().T).clamp_min(0.0)
    return weights.masked_fill(weights < eps, 0.0)


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U(0, 1) drawn on the generator's own device (a CPU generator may drive GPU work), then moved."""
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source).to(device)


def sample_negatives(
    weights: Tensor, num: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Draw ``num`` negatives per anchor, without replacement, with probability proportional to weight.

    Gumbel-top-k: the ``num`` largest ``log w + Gumbel`` keys are a weighted draw without
    replacement. Zero weights get key ``-inf`` and so rank after every positive one; where an
    anchor has fewer than ``num`` positive-weight candidates the missing draws come back marked
    invalid (to be masked out of the loss), never as zero-weight picks.

    Args:
        weights: ``(A, N)`` non-negative sampling weights.
        num: draws per anchor ``R``.
        generator: the source of randomness (seeded for reproducible runs).

    Returns:
        ``(index, valid)``: int64 ``(A, R)`` pool indices and bool ``(A, R)``; invalid entries of
        ``index`` are arbitrary and must not be used.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if weights.ndim != 2 or bool((weights < 0).any()):
        raise ValueError(f"weights must be a non-negative (A, N) matrix, got shape {tuple(weights.shape)}")
    tiny = torch.finfo(torch.float32).tiny  # keeps log(u) finite when rand returns exactly 0
    gumbel = -torch.log(-torch.log(_uniform(tuple(weights.shape), generator, weights.device).clamp_min(tiny)))
    keys = torch.log(weights.float()) + gumbel  # log 0 = -inf: never ahead of a positive weight
    k = min(num, weights.shape[1])
    top, index = keys.topk(k, dim=1)
    valid = torch.isfinite(top)
    if k < num:  # a pool smaller than R: pad with invalid draws so the shape stays (A, R)
        pad = num - k
        index = torch.cat([index, index.new_zeros(index.shape[0], pad)], dim=1)
        valid = torch.cat([valid, valid.new_zeros(valid.shape[0], pad)], dim=1)
    return index, valid
