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
    semantic_weight: float = 1.0  # the auxiliary class loss, when the model has a semantic head
    semantic_loss: str = "pooled"  # "pooled": per instance, over its mask; "dense": per cell; "both"


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
                optionally ``"aux_outputs"``, a list of dicts with the same two keys, and
                ``"query_groups"`` G (Group DETR): the K queries are G groups, each matched one-to-one
                on its own, and every term is the mean over the groups.
            targets: B dicts, ``"labels"`` int64 ``(N_b,)`` in ``[0, C)``, ``"masks"`` bool/float
                ``(N_b, H, W)`` at input resolution (any ``H, W``; ``N_b`` may be 0).

            With ``"aux_semantic"`` (the model's training-only dense class head), ``"loss_semantic"``
            is added (``weights.semantic_weight``).

        Returns:
            Weighted scalars ``"loss_class"``, ``"loss_mask"``, ``"loss_dice"``, the same with suffix
            ``"_aux{i}"`` per aux output (when deep supervision is on), and their sum ``"loss"``.
        """
        self._check(outputs, targets)
        num_masks = self._num_masks(targets, outputs["pred_logits"].device)
        groups = int(outputs.get("query_groups", 1))
        losses = self.grouped_losses(outputs, targets, num_masks, groups)
        if self.deep_supervision:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                layer = self.grouped_losses(aux, targets, num_masks, groups)
                losses.update({f"{name}_aux{i}": value for name, value in layer.items()})
        if "aux_semantic" in outputs and self.weights.semantic_weight > 0:
            losses["loss_semantic"] = self.weights.semantic_weight * self._semantic_loss(outputs["aux_semantic"], targets)
        losses["loss"] = torch.stack(list(losses.values())).sum()
        return losses

    def _semantic_loss(self, levels: list[Tensor], targets: list[dict[str, Tensor]]) -> Tensor:
        """Auxiliary class loss on per-pixel class logits ``(B, C+1, h, w)`` (one per level), averaged.

        ``pooled``: each target instance's logits are averaged over its mask (resized to the level) and
        scored with cross-entropy against its class: a linear classifier on mask-pooled features,
        like classifying a crop of the object. ``dense``: every cell is scored against the class of
        the instance under its centre (background = C, weighted ``no_object_weight`` since most
        cells are background). Either gives the memory maps a class signal from every object, where
        the set loss gives one only through the queries that happen to be matched; the pooled form
        learns shapes far faster (the whole object votes, at any scale).
        """
        terms = []
        if self.weights.semantic_loss in ("pooled", "both"):
            terms += [self._pooled_class_loss(logits, targets) for logits in levels]
        if self.weights.semantic_loss in ("dense", "both"):
            dense = self._dense_labels(targets, levels[0].device)  # built once, sampled per level
            terms += [self._dense_class_loss(logits, dense) for logits in levels]
        return torch.stack(terms).mean()

    def _pooled_class_loss(self, logits: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        pooled, labels = [], []
        for b, t in enumerate(targets):
            if not len(t["labels"]):
                continue
            weights = resize_masks(t["masks"].to(logits.device), tuple(logits.shape[-2:])).flatten(1)  # (N, hw)
            mass = weights.sum(1, keepdim=True)
            seen = mass[:, 0] > 0.25  # at least a quarter cell at this level
            if seen.any():
                pooled.append((weights[seen] / mass[seen]) @ logits[b].float().flatten(1).T)  # (N, C+1)
                labels.append(t["labels"].to(logits.device)[seen])
        if not pooled:
            return logits.sum() * 0.0
        return F.cross_entropy(torch.cat(pooled), torch.cat(labels))

    def _dense_labels(self, targets: list[dict[str, Tensor]], device: torch.device) -> Tensor:
        """``(B, H, W)`` class of the instance at each input pixel, background ``num_classes``."""
        height, width = targets[0]["masks"].shape[-2:]
        dense = torch.full((len(targets), height, width), self.num_classes, dtype=torch.int64, device=device)
        for b, t in enumerate(targets):
            for mask, label in zip(t["masks"].to(device).bool(), t["labels"].to(device)):
                dense[b][mask] = label
        return dense

    def _dense_class_loss(self, logits: Tensor, dense: Tensor) -> Tensor:
        stride = dense.shape[-2] // logits.shape[-2]
        cells = dense[:, stride // 2 :: stride, stride // 2 :: stride][:, : logits.shape[-2], : logits.shape[-1]]
        return F.cross_entropy(logits.float(), cells, weight=self.class_weight.to(logits.device))

    def grouped_losses(self, layer: dict[str, Tensor], targets: list[dict[str, Tensor]], num_masks: Tensor,
                       groups: int) -> dict[str, Tensor]:
        """:meth:`layer_losses` of each query group (Group DETR), averaged over the groups."""
        if groups == 1:
            return self.layer_losses(layer, targets, num_masks)
        chunks = [{k: layer[k].chunk(groups, dim=1)[g] for k in ("pred_logits", "pred_masks")} for g in range(groups)]
        per_group = [self.layer_losses(chunk, targets, num_masks) for chunk in chunks]
        return {name: torch.stack([terms[name] for terms in per_group]).mean() for name in per_group[0]}

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
