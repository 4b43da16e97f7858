"""L_pxl: the instance-aware pixel-wise contrastive loss (METHOD.md section 4).

Encoder features of the weak and the strong view (same geometry: grid cell ``p`` is the same scene
point in both) go through separate projection MLPs and are L2-normalised. For an anchor pixel the
positive is its own strong embedding; ``R`` negatives are strong embeddings of other pixels anywhere
in the batch, drawn by :mod:`~sskd_deploy.training.negatives` from the model's own detached
predictions. The strong branch is a stop-gradient target that lives in the weak branch's embedding
space: ``strong_head="shared"`` projects it with the weak head's current weights, ``"ema"`` with an
exponential moving average of them (momentum ``ema_momentum``, updated before each use); either way
it runs without autograd, so the gradient reaches the encoder only through the weak view. (A strong
head frozen at its initial weights would be a fixed random target.)

    L = -mean_a log( exp(s+) / (exp(s+) + sum_r exp(s-_r)) ),  s = <z_w, z> / T

The temperature follows :func:`temperature_at` (cosine 0.3 -> 0.07 by default). Diagnostics, for
the training log: the inter-instance margin (mean distance to the sampled negatives minus mean
distance to the positive, distance = 1 - cosine) and the false-negative rate of the sampled
negatives against ground-truth instance ids where they are known.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sskd_deploy.training.negatives import (
    SAMPLING_VARIANTS,
    negative_weights,
    sample_negatives,
    sampling_embedding,
)

STRONG_HEADS = ("shared", "ema")

__all__ = [
    "PixelContrast", "ProjectionHead", "info_nce", "negative_weights", "sample_negatives", "sampling_embedding",
    "temperature_at",
]


def temperature_at(
    step: int, total_steps: int, *, start: float = 0.3, end: float = 0.07, schedule: str = "anneal"
) -> float:
    """The temperature at ``step`` of ``total_steps``.

    ``anneal``: cosine from ``start`` (step 0) to ``end`` (step ``total_steps`` and after);
    ``fixed``: ``start`` throughout.
    """
    if start <= 0 or end <= 0:
        raise ValueError(f"temperatures must be > 0, got start={start}, end={end}")
    if schedule == "fixed":
        return float(start)
    if schedule != "anneal":
        raise ValueError(f"temperature schedule must be 'anneal' or 'fixed', got {schedule!r}")
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return float(end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress)))


class ProjectionHead(nn.Module):
    """Per-pixel MLP ``C -> hidden -> out`` as 1x1 convolutions, BN-free: ``(B, C, h, w) -> (B, out, h, w)``.

    No normalisation layers: batch statistics would couple the pixels being contrasted. The output
    is not normalised here; :class:`PixelContrast` L2-normalises it.
    """

    def __init__(self, *, in_channels: int, hidden_dim: int = 256, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden_dim, kernel_size=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, out_dim, kernel_size=1),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


def info_nce(
    anchor: Tensor, positive: Tensor, pool: Tensor, index: Tensor, valid: Tensor, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-anchor contrastive loss over sampled negatives.

    Args:
        anchor, positive: ``(A, D)`` unit vectors (weak anchor, its strong positive).
        pool: ``(N, D)`` unit strong embeddings the negatives index into.
        index, valid: ``(A, R)`` from :func:`sample_negatives`; invalid draws are left out.
        temperature: ``T``.

    Returns:
        ``(loss (A,), positive cosine (A,), negative cosines (A, R))`` (cosines before ``/ T``).
    """
    pos_cos = (anchor * positive).sum(dim=-1)
    # One (A, N) matmul then a gather: cheaper than materialising the (A, R, D) negatives.
    neg_cos = torch.gather(anchor @ pool.T, 1, index)
    # -log(e^s+ / (e^s+ + sum e^s-)) = softplus(logsumexp_r(s-_r - s+)): exact near the floor, where
    # logsumexp([s+, s-]) - s+ would cancel catastrophically in float32.
    has_negative = valid.any(dim=1, keepdim=True)
    relative = (neg_cos - pos_cos[:, None]) / temperature
    # Anchors without a valid draw get finite placeholders (an all -inf row has a nan gradient), then loss 0.
    relative = relative.masked_fill(~valid & has_negative, -math.inf).masked_fill(~has_negative, 0.0)
    loss = F.softplus(torch.logsumexp(relative, dim=1)) * has_negative.squeeze(1)
    return loss, pos_cos, neg_cos


class PixelContrast(nn.Module):
    """L_pxl with prediction-guided negatives; call once per training step.

    Args:
        in_channels: encoder feature channels ``C``.
        hidden_dim, embed_dim: projection MLP sizes (``C -> hidden -> D``).
        num_negatives: ``R`` negatives per anchor.
        sampling: ``uniform | mask | class | fused`` (see :mod:`~sskd_deploy.training.negatives`).
        max_anchors: anchors per step; more pixels than this are subsampled at random (the weight
            matrix is ``(anchors, B*h*w)``). ``None``: every pixel is an anchor.
        patch_size: image pixels per feature cell, to place the mask predictions on the feature
            grid (DINOv2: 14). ``None`` resizes the whole mask map onto the grid.
        mask_stride: image pixels per mask-logit cell (4).
    """

    def __init__(
        self, *, in_channels: int, hidden_dim: int = 256, embed_dim: int = 128, num_negatives: int = 200,
        sampling: str = "fused", max_anchors: int | None = 1024, patch_size: int | None = 14, mask_stride: int = 4,
        strong_head: str = "shared", ema_momentum: float = 0.99,
    ) -> None:
        super().__init__()
        if sampling not in SAMPLING_VARIANTS:
            raise ValueError(f"sampling must be one of {SAMPLING_VARIANTS}, got {sampling!r}")
        if strong_head not in STRONG_HEADS or not 0 <= ema_momentum < 1:
            raise ValueError(f"strong_head must be one of {STRONG_HEADS} and 0 <= ema_momentum < 1, "
                             f"got {strong_head!r}, {ema_momentum}")
        if num_negatives < 1 or (max_anchors is not None and max_anchors < 1):
            raise ValueError(f"num_negatives and max_anchors must be >= 1, got {num_negatives}, {max_anchors}")
        self.num_negatives, self.sampling, self.max_anchors = num_negatives, sampling, max_anchors
        self.patch_size, self.mask_stride = patch_size, mask_stride
        self.weak_head = ProjectionHead(in_channels=in_channels, hidden_dim=hidden_dim, out_dim=embed_dim)
        self.strong_mode, self.ema_momentum = strong_head, ema_momentum
        self.strong_head: ProjectionHead | None = None
        if strong_head == "ema":
            # Starts as a copy of the weak head and follows it; no optimizer or DDP reducer touches it.
            self.strong_head = ProjectionHead(in_channels=in_channels, hidden_dim=hidden_dim, out_dim=embed_dim)
            self.strong_head.load_state_dict(self.weak_head.state_dict())
            self.strong_head.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg, *, in_channels: int, patch_size: int | None) -> PixelContrast:
        """From a ``train.pxl`` section (:class:`~sskd_deploy.config.train.PixelContrastConfig`)."""
        return cls(in_channels=in_channels, hidden_dim=cfg.hidden_dim, embed_dim=cfg.embed_dim,
                   num_negatives=cfg.num_negatives, sampling=cfg.sampling, max_anchors=cfg.max_anchors,
                   patch_size=patch_size, strong_head=cfg.strong_head, ema_momentum=cfg.ema_momentum)

    @torch.no_grad()
    def project_strong(self, feat_strong: Tensor) -> Tensor:
        """Strong-view embeddings ``(B, D, h, w)`` without gradient, in the weak head's space."""
        if self.strong_head is None:
            return self.weak_head(feat_strong.detach())
        if self.training:  # the EMA follows the weak head as it was after the last optimizer step
            for ema, live in zip(self.strong_head.parameters(), self.weak_head.parameters()):
                ema.lerp_(live.detach(), 1.0 - self.ema_momentum)
        return self.strong_head(feat_strong.detach())

    def forward(
        self, feat_weak: Tensor, feat_strong: Tensor, pred_logits: Tensor, pred_masks: Tensor, *,
        temperature: float, instance_ids: Tensor | None = None, generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """The loss and its diagnostics.

        Args:
            feat_weak, feat_strong: ``(B, C, h, w)`` encoder features of the weak / strong view.
            pred_logits, pred_masks: ``(B, K, C+1)`` and ``(B, K, H4, W4)``, the model's predictions
                on the weak view (used detached, for sampling only).
            temperature: ``T`` (see :func:`temperature_at`).
            instance_ids: optional int64 ``(B, h, w)`` ground-truth instance per feature cell (0 =
                background, -1 = unknown), for the false-negative rate only.
            generator: randomness for the anchor subset and the negative draws.

        Returns:
            ``(loss, diagnostics)``: a scalar tensor and plain floats ``{"margin",
            "false_negative_rate", "positive_sim", "negative_sim"}`` (nan where undefined).
        """
        self._check_shapes(feat_weak, feat_strong, pred_logits, pred_masks, instance_ids)
        size = tuple(feat_weak.shape[-2:])
        z_weak = _flat_unit(self.weak_head(feat_weak))  # (P, D), P = B*h*w
        with torch.no_grad():
            z_strong = _flat_unit(self.project_strong(feat_strong))
            y = sampling_embedding(pred_logits, pred_masks, size, self.sampling,
                                   patch_size=self.patch_size, mask_stride=self.mask_stride).flatten(0, 1)
            anchors = self._pick_anchors(z_weak.shape[0], generator, z_weak.device)
            weights = negative_weights(y[anchors], y)
            weights[torch.arange(anchors.numel(), device=weights.device), anchors] = 0.0  # never itself
            index, valid = sample_negatives(weights, self.num_negatives, generator)
        loss, pos_cos, neg_cos = info_nce(z_weak[anchors], z_strong[anchors], z_strong, index, valid, temperature)
        ids = None if instance_ids is None else _batch_unique_ids(instance_ids).to(index.device)
        return loss.mean(), _diagnostics(pos_cos.detach(), neg_cos.detach(), valid, anchors, index, ids)

    def _pick_anchors(self, num_pixels: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Sorted pixel indices ``(A,)``: all pixels, or a random ``max_anchors`` of them."""
        if self.max_anchors is None or num_pixels <= self.max_anchors:
            return torch.arange(num_pixels, device=device)
        source = generator.device if generator is not None else device
        chosen = torch.randperm(num_pixels, generator=generator, device=source)[: self.max_anchors]
        return chosen.sort().values.to(device)

    @staticmethod
    def _check_shapes(feat_weak, feat_strong, pred_logits, pred_masks, instance_ids) -> None:
        batch, _, h, w = feat_weak.shape
        problems = []
        if feat_strong.shape != feat_weak.shape:
            problems.append(f"feat_strong {tuple(feat_strong.shape)} != feat_weak {tuple(feat_weak.shape)}")
        if pred_logits.ndim != 3 or pred_masks.ndim != 4 or pred_logits.shape[:2] != pred_masks.shape[:2]:
            problems.append(f"pred_logits {tuple(pred_logits.shape)} / pred_masks {tuple(pred_masks.shape)} "
                            "must be (B, K, C+1) / (B, K, H4, W4)")
        elif pred_logits.shape[0] != batch:
            problems.append(f"predictions have batch {pred_logits.shape[0]}, features {batch}")
        if instance_ids is not None and tuple(instance_ids.shape) != (batch, h, w):
            problems.append(f"instance_ids {tuple(instance_ids.shape)} != {(batch, h, w)}")
        if problems:
            raise ValueError("PixelContrast: " + "; ".join(problems))


def _batch_unique_ids(instance_ids: Tensor) -> Tensor:
    """``(B, h, w)`` per-image ids -> ``(B*h*w,)`` ids unique across the batch (-1 stays unknown).

    Instance 1 of image 0 and instance 1 of image 1 are different objects; so are two images'
    backgrounds. Only pixels of the same image and the same id (object, or that image's
    background) are the same region, i.e. a false negative when drawn.
    """
    flat = instance_ids.reshape(instance_ids.shape[0], -1)
    span = int(flat.max().clamp(min=0).item()) + 1
    offset = span * torch.arange(flat.shape[0], device=flat.device)[:, None]
    return torch.where(flat >= 0, flat + offset, flat).reshape(-1)


def _flat_unit(embedding: Tensor) -> Tensor:
    """``(B, D, h, w)`` -> unit vectors ``(B*h*w, D)`` in float32 (stable similarities under AMP)."""
    return F.normalize(embedding.float().flatten(2).transpose(1, 2).flatten(0, 1), dim=-1)


def _diagnostics(
    pos_cos: Tensor, neg_cos: Tensor, valid: Tensor, anchors: Tensor, index: Tensor, ids: Tensor | None
) -> dict[str, float]:
    """Plain-float log values; see :meth:`PixelContrast.forward`."""
    positive = pos_cos.mean().item()
    negative = neg_cos[valid].mean().item() if bool(valid.any()) else math.nan
    # margin = mean(1 - neg cos) - mean(1 - pos cos)
    margin = positive - negative
    fn_rate = math.nan
    if ids is not None:
        anchor_ids, negative_ids = ids[anchors][:, None], ids[index]
        known = valid & (anchor_ids >= 0) & (negative_ids >= 0)
        if bool(known.any()):
            fn_rate = ((negative_ids == anchor_ids) & known).sum().item() / known.sum().item()
    return {"margin": margin, "false_negative_rate": fn_rate, "positive_sim": positive, "negative_sim": negative}
