"""The teacher interface stage 1 and the pseudo-label store program against.

A teacher predicts, per image, a set of candidate instances with per-query class probabilities
and per-query mask probabilities, can be trained (its trainable parameters and a loss on a batch
of targets), and exposes a dense feature map for the pixel contrastive term. The same-family
teachers (``teacher-l``, ``teacher-tiny``) satisfy it through :class:`MaskFormerTeacher`; the
Grounding DINO + SAM2 teacher implements the same protocol with its own parts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from sskd_deploy.models.criterion import SetCriterion


@runtime_checkable
class Teacher(Protocol):
    """What training needs from any teacher.

    ``predict_queries(images)`` takes uint8 ``(B, 3, H, W)`` and returns ``{"class_prob": (B, Q, C+1)
    (last = no-object), "mask_prob": (B, Q, h, w) in [0, 1]}``. ``loss(images, targets)`` returns a
    dict of scalar tensors including ``"loss"``; ``targets`` is a list of
    ``{"labels": int64 (N,), "masks": bool (N, H, W)}``.
    """

    def predict_queries(self, images: Tensor) -> dict[str, Tensor]: ...

    def trainable_parameters(self) -> Iterator[nn.Parameter]: ...

    def loss(self, images: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]: ...

    def dense_features(self, images: Tensor) -> Tensor: ...


class MaskFormerTeacher(nn.Module):
    """Adapts a same-family :class:`~sskd_deploy.models.maskformer.MaskFormer` to :class:`Teacher`.

    ``trainable`` selects which parts train (``"encoder"``, ``"pixel_decoder"``,
    ``"transformer_decoder"``); the others are frozen.
    """

    def __init__(self, *, model: nn.Module, criterion: SetCriterion, trainable: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion
        parts = model.parts()
        self.trainable = tuple(parts) if trainable is None else tuple(trainable)
        unknown = set(self.trainable) - set(parts)
        if unknown:
            raise ValueError(f"unknown teacher parts {sorted(unknown)}; have {sorted(parts)}")
        for name, part in parts.items():
            part.requires_grad_(name in self.trainable)

    def forward_train(self, images: Tensor) -> dict[str, Any]:
        return self.model(self.model.normalize(images))

    @torch.no_grad()
    def predict_queries(self, images: Tensor) -> dict[str, Tensor]:
        out = self.forward_train(images)
        return {"class_prob": out["pred_logits"].softmax(-1), "mask_prob": out["pred_masks"].sigmoid()}

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.model.parameters() if p.requires_grad)

    def loss(self, images: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        return self.criterion(self.forward_train(images), targets)

    def dense_features(self, images: Tensor) -> Tensor:
        return self.forward_train(images)["features"]
