"""The Mask2Former set loss: match queries to instances, then score classes and matched masks.

``loss = class_weight * CE + mask_weight * BCE + dice_weight * Dice`` on the final decoder layer and
again, with its own matching, on every intermediate layer (deep supervision). CE covers all K
queries: matched ones learn their instance's class, the rest learn "no object" with a reduced
weight (most queries are unmatched, so full weight would teach the model to predict nothing). An
image without targets therefore still trains its queries towards "no object" and nothing else.

Mask terms are summed over matched pairs and divided by the number of target masks in the batch
(averaged across DDP processes), so every instance weighs the same whatever its image or rank.
They run on importance-sampled points (``num_points``) or, with ``num_points=None``, on whole masks
at the prediction's resolution with the targets shrunk to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from sskd_deploy.models.matcher import HungarianMatcher, Match, resize_masks
from sskd_deploy.models.point_sampling import point_sample, uncertain_points


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three terms, and of the no-object class inside CE (METHOD.md section 3)."""

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1


def sigmoid_bce_loss(logits: Tensor, targets: Tensor, num_masks: Tensor) -> Tensor:
    """Per-mask mean BCE, summed over masks, over ``num_masks``. logits/targets ``(M, P)``."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: Tensor, targets: Tensor, num_masks: Tensor) -> Tensor:
    """Per-mask ``1 - (2|p t| + 1) / (|p| + |t| + 1)``, summed, over ``num_masks``. ``(M, P)`` each."""
    probs = logits.sigmoid()
    numerator = 2.0 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1.0 - (numerator + 1.0) / (denominator + 1.0)).sum() / num_masks


class SetCriterion(nn.Module):
    """Deep-supervised Mask2Former loss for outputs ``{"pred_logits", "pred_masks", "aux_outputs"}``."""

    def __init__(
        self,
        *,
        num_classes: int,
        matcher: HungarianMatcher | None = None,
        weights: LossWeights = LossWeights(),
        num_points: int | None = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
    ) -> None:
        """``num_classes`` C excludes no-object (logits have C+1 columns). Without a ``matcher``,
        one with the loss weights as costs and the same ``num_points`` is built."""
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if num_points is not None and num_points < 1:
            raise ValueError(f"num_points must be >= 1 or None, got {num_points}")
        self.num_classes = num_classes
        if matcher is None:
            matcher = HungarianMatcher(cost_class=weights.class_weight, cost_mask=weights.mask_weight,
                                       cost_dice=weights.dice_weight, num_points=num_points)
        self.matcher = matcher
        self.weights = weights
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = weights.no_object_weight
        self.register_buffer("class_weight", class_weight, persistent=False)

    def forward(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Args:
            outputs: ``"pred_logits"`` ``(B, K, C+1)``, ``"pred_masks"`` ``(B, K, h, w)`` logits and
                optionally ``"aux_outputs"``, a list of dicts with the same two keys.
            targets: B dicts, ``"labels"`` int64 ``(N_b,)`` in ``[0, C)``, ``"masks"`` bool/float
                ``(N_b, H, W)`` at input resolution (any ``H, W``; ``N_b`` may be 0).

        Returns:
            Weighted scalars ``"loss_class"``, ``"loss_mask"``, ``"loss_dice"``, the same with suffix
            ``"_aux{i}"`` per aux output (when deep supervision is on), and their sum ``"loss"``.
        """
        self._check(outputs, targets)
        num_masks = self._num_masks(targets, outputs["pred_logits"].device)
        losses = self.layer_losses(outputs, targets, num_masks)
        if self.deep_supervision:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                layer = self.layer_losses(aux, targets, num_masks)
                losses.update({f"{name}_aux{i}": value for name, value in layer.items()})
        losses["loss"] = torch.stack(list(losses.values())).sum()
        return losses

    def layer_losses(self, layer: dict[str, Tensor], targets: list[dict[str, Tensor]],
                     num_masks: Tensor) -> dict[str, Tensor]:
        """Match one decoder layer's output and return its three weighted terms."""
        logits, masks = layer["pred_logits"], layer["pred_masks"]
        matches = self.matcher(logits, masks, targets)
        bce, dice = self._mask_losses(masks, targets, matches, num_masks)
        return {
            "loss_class": self.weights.class_weight * self._class_loss(logits, targets, matches),
            "loss_mask": self.weights.mask_weight * bce,
            "loss_dice": self.weights.dice_weight * dice,
        }

    def _class_loss(self, logits: Tensor, targets: list[dict[str, Tensor]], matches: list[Match]) -> Tensor:
        """Weighted-mean CE over all ``B * K`` queries; unmatched ones target no-object (index C)."""
        batch, queries, _ = logits.shape
        labels = torch.full((batch, queries), self.num_classes, dtype=torch.int64, device=logits.device)
        for b, (query_idx, target_idx) in enumerate(matches):
            labels[b, query_idx.to(logits.device)] = targets[b]["labels"].to(logits.device)[target_idx]
        weight = self.class_weight.to(device=logits.device, dtype=torch.float32)
        return F.cross_entropy(logits.float().transpose(1, 2), labels, weight=weight)

    def _mask_losses(self, masks: Tensor, targets: list[dict[str, Tensor]], matches: list[Match],
                     num_masks: Tensor) -> tuple[Tensor, Tensor]:
        """Unweighted (BCE, Dice) over the matched pairs of the whole batch."""
        preds = torch.cat([masks[b, q.to(masks.device)] for b, (q, _) in enumerate(matches)]).float()
        gts = [t["masks"].to(masks.device)[n.to(masks.device)] for t, (_, n) in zip(targets, matches)]
        if self.num_points is None:
            size = tuple(preds.shape[-2:])
            pred_flat = preds.flatten(1)
            gt_flat = torch.cat([resize_masks(g, size) for g in gts]).flatten(1)
        else:
            pred_flat, gt_flat = self._sample_points(preds, gts)
        return sigmoid_bce_loss(pred_flat, gt_flat, num_masks), dice_loss(pred_flat, gt_flat, num_masks)

    def _sample_points(self, preds: Tensor, gts: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Read matched predictions ``(M, h, w)`` and their targets at the same uncertain points.

        Targets stay per image (images of a batch may differ in size); returns ``(M, P)`` twice.
        """
        coords = uncertain_points(preds.unsqueeze(1), self.num_points, self.oversample_ratio,
                                  self.importance_sample_ratio)
        with torch.no_grad():
            per_image = coords.split([g.shape[0] for g in gts])
            gt_points = torch.cat(
                [point_sample(g.float().unsqueeze(1), c)[:, 0] for g, c in zip(gts, per_image)]
            )
        return point_sample(preds.unsqueeze(1), coords)[:, 0], gt_points

    @staticmethod
    def _num_masks(targets: list[dict[str, Tensor]], device: torch.device) -> Tensor:
        """Target masks per process (mean over DDP ranks), at least 1 to keep empty batches finite."""
        count = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return count.clamp(min=1.0)

    def _check(self, outputs: dict, targets: list[dict[str, Tensor]]) -> None:
        """Fail loudly on shapes or labels that would otherwise train silently wrong."""
        logits = outputs["pred_logits"]
        if logits.dim() != 3 or logits.shape[-1] != self.num_classes + 1:
            raise ValueError(f"pred_logits must be (B, K, {self.num_classes + 1}), got {tuple(logits.shape)}")
        if len(targets) != logits.shape[0]:
            raise ValueError(f"{len(targets)} target dicts for a batch of {logits.shape[0]}")
        for b, t in enumerate(targets):
            labels, masks = t["labels"], t["masks"]
            if labels.dim() != 1 or masks.dim() != 3 or masks.shape[0] != labels.shape[0]:
                raise ValueError(f"target {b}: labels (N,) and masks (N, H, W) disagree: "
                                 f"{tuple(labels.shape)} vs {tuple(masks.shape)}")
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"target {b}: labels must lie in [0, {self.num_classes}), got {labels.tolist()}"
                )
