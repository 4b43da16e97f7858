"""One-to-one assignment of predicted queries to target instances (Hungarian matching).

The cost of pairing query ``k`` with target ``n`` is
``cost_class * CE_k(label_n) + cost_mask * BCE(mask_k, mask_n) + cost_dice * Dice(mask_k, mask_n)``
and ``scipy.optimize.linear_sum_assignment`` picks the pairing of least total cost per image.

``class_cost="ce"`` (the default, as the method states it) uses the cross-entropy ``-log p``;
``class_cost="prob"`` uses ``-p``, the stand-in Mask2Former (after DETR) uses: a bounded
``[-1, 0]`` term stays commensurable with the bounded mask terms, while ``-log p`` of a query
that is nearly sure of another class can dominate them. Both rank a query's classes the same.

Mask costs for all ``K x N`` pairs are matmuls, never per-pair loops, so full stride-4 masks fit
in memory: ``BCE(x, t) = mean_p[softplus(-x) t + softplus(x) (1 - t)]`` splits into two products.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from sskd_deploy.models.point_sampling import point_sample

Match = tuple[Tensor, Tensor]


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize target masks ``(N, H, W)`` (bool or float) to soft float masks ``(N, h, w)`` in [0, 1].

    Shrinking averages the covered pixels ("area"), so a mask aligned to the stride stays exactly
    binary and a boundary pixel gets its covered fraction; growing is bilinear.
    """
    masks = masks.float()
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    shrink = masks.shape[-2] >= size[0] and masks.shape[-1] >= size[1]
    mode = "area" if shrink else "bilinear"
    extra = {} if shrink else {"align_corners": False}
    return F.interpolate(masks.unsqueeze(1), size=size, mode=mode, **extra).squeeze(1).clamp(0.0, 1.0)


def pairwise_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean per-point sigmoid BCE of every prediction against every target.

    Args: logits ``(K, P)``, targets ``(N, P)`` soft or binary. Returns ``(K, N)``.
    """
    points = logits.shape[1]
    pos = F.softplus(-logits)  # -log sigmoid(x): cost of a pixel the target marks as inside
    neg = F.softplus(logits)  # -log(1 - sigmoid(x)): cost of a pixel outside
    return (pos @ targets.T + neg @ (1.0 - targets).T) / points


def pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """``1 - (2|p t| + 1) / (|p| + |t| + 1)`` with ``p = sigmoid(logits)`` for every pair.

    Args: logits ``(K, P)``, targets ``(N, P)``. Returns ``(K, N)``. The +1 keeps empty pairs finite.
    """
    probs = logits.sigmoid()
    numerator = 2.0 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


class HungarianMatcher(nn.Module):
    """Match each image's targets to a subset of its K queries (no learnable parameters)."""

    def __init__(
        self,
        *,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int | None = 12544,
        class_cost: str = "ce",
    ) -> None:
        """``num_points``: uniform random points per image for the mask costs (shared by all pairs);
        ``None`` compares whole masks at the prediction's resolution. ``class_cost``: ``"ce"`` or ``"prob"``."""
        super().__init__()
        if class_cost not in ("ce", "prob"):
            raise ValueError(f"class_cost must be 'ce' or 'prob', got {class_cost!r}")
        self.class_cost = class_cost
        if num_points is not None and num_points < 1:
            raise ValueError(f"num_points must be >= 1 or None, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(
        self, pred_logits: Tensor, pred_masks: Tensor, targets: list[dict[str, Tensor]]
    ) -> list[Match]:
        """Args:
            pred_logits: ``(B, K, C+1)`` class logits, last = no-object.
            pred_masks: ``(B, K, h, w)`` mask logits.
            targets: B dicts with ``"labels"`` int64 ``(N_b,)`` and ``"masks"`` ``(N_b, H, W)``.

        Returns:
            B pairs ``(query_idx, target_idx)``, int64 ``(min(K, N_b),)`` each on CPU, sorted by
            query; ``query_idx[i]`` is matched to target ``target_idx[i]``.
        """
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"{len(targets)} target dicts for a batch of {pred_logits.shape[0]}")
        return [self._match_image(pred_logits[b], pred_masks[b], t) for b, t in enumerate(targets)]

    def cost_matrix(self, logits: Tensor, masks: Tensor, target: dict[str, Tensor]) -> Tensor:
        """Matching cost ``(K, N)`` for one image: logits ``(K, C+1)``, masks ``(K, h, w)``."""
        labels = target["labels"].to(logits.device).long()
        if self.class_cost == "ce":
            cost = -self.cost_class * logits.float().log_softmax(-1)[:, labels]
        else:
            cost = -self.cost_class * logits.float().softmax(-1)[:, labels]
        pred, tgt = self._flat_masks(masks.float(), target["masks"].to(masks.device))
        return cost + self.cost_mask * pairwise_bce(pred, tgt) + self.cost_dice * pairwise_dice(pred, tgt)

    def _flat_masks(self, pred: Tensor, tgt: Tensor) -> tuple[Tensor, Tensor]:
        """Predictions ``(K, P)`` and targets ``(N, P)`` read at the same P places."""
        if self.num_points is None:
            tgt = resize_masks(tgt, tuple(pred.shape[-2:]))
            return pred.flatten(1), tgt.flatten(1)
        # One set of points for the whole image, so every pair is compared on the same pixels.
        coords = torch.rand(1, self.num_points, 2, device=pred.device)
        pred_points = point_sample(pred.unsqueeze(1), coords.expand(pred.shape[0], -1, -1))
        tgt_points = point_sample(tgt.float().unsqueeze(1), coords.expand(tgt.shape[0], -1, -1))
        return pred_points[:, 0], tgt_points[:, 0]

    def _match_image(self, logits: Tensor, masks: Tensor, target: dict[str, Tensor]) -> Match:
        empty = torch.zeros(0, dtype=torch.int64)
        if target["labels"].numel() == 0:
            return empty, empty.clone()
        cost = self.cost_matrix(logits, masks, target).cpu()
        if not torch.isfinite(cost).all():
            raise ValueError("matching cost has NaN/inf entries: the predictions are not finite")
        rows, cols = linear_sum_assignment(cost.numpy())
        return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(np.asarray(cols), dtype=torch.int64)
