"""The deploy wrapper: the one module that gets exported, and the path every validation AP takes.

uint8 NCHW RGB in, normalisation inside (buffers), the network, then Mask2Former-style instance
selection with static shapes: the top-K (query, class) pairs by class probability, each scored
``class probability x mean mask probability inside the query's binary mask``. No NMS is needed:
queries are already one per instance. Host-side un-padding, resizing and thresholding is
:func:`sskd_deploy.evaluation.postprocess.postprocess`, implemented once.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sskd_deploy.spec import IOSpec


def select_top_k(pred_logits: Tensor, pred_masks: Tensor, top_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pick the ``top_k`` best (query, class) pairs per image.

    Args:
        pred_logits: (B, Q, C+1) class logits, last = no-object.
        pred_masks: (B, Q, h, w) mask logits.
    Returns:
        scores (B, K) float32, labels (B, K) int64, mask_logits (B, K, h, w) float32.
    """
    batch, queries, classes_plus_one = pred_logits.shape
    num_classes = classes_plus_one - 1
    class_prob = pred_logits.float().softmax(-1)[..., :num_classes]  # (B, Q, C)
    top_prob, flat_index = class_prob.flatten(1).topk(top_k, dim=1)  # over Q*C pairs
    query = torch.div(flat_index, num_classes, rounding_mode="floor")
    labels = flat_index - query * num_classes
    gather = query[:, :, None, None].expand(-1, -1, pred_masks.shape[-2], pred_masks.shape[-1])
    mask_logits = pred_masks.float().gather(1, gather)  # (B, K, h, w)
    mask_prob = mask_logits.sigmoid()
    inside = (mask_logits > 0).to(mask_prob.dtype)
    mask_score = (mask_prob * inside).flatten(2).sum(-1) / (inside.flatten(2).sum(-1) + 1e-6)
    return top_prob * mask_score, labels.to(torch.int64), mask_logits


class DeployWrapper(nn.Module):
    """Exportable inference graph described by an :class:`IOSpec`.

    ``forward(images)`` takes uint8 ``(B, 3, H, W)`` at ``spec.input_size`` and returns the tuple
    ``(scores (B, K), labels (B, K), mask_logits (B, K, H/4, W/4))`` named by ``spec.output_names``.
    """

    def __init__(self, *, model: nn.Module, spec: IOSpec) -> None:
        super().__init__()
        if tuple(model.config.input_size) != tuple(spec.input_size):
            raise ValueError(f"model input_size {model.config.input_size} != IOSpec input_size {spec.input_size}")
        if model.config.num_classes != spec.num_classes:
            raise ValueError(f"model has {model.config.num_classes} classes, IOSpec names {spec.num_classes}")
        if tuple(model.config.pixel_mean) != tuple(spec.pixel_mean) or tuple(model.config.pixel_std) != tuple(
            spec.pixel_std
        ):
            raise ValueError("model and IOSpec disagree on pixel_mean/pixel_std")
        self.model = model
        self.spec = spec

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        outputs = self.model(self.model.normalize(images))
        return select_top_k(outputs["pred_logits"], outputs["pred_masks"], self.spec.top_k)
