"""The student (and same-family teacher): DINOv2 encoder -> DPT pixel decoder -> Mask2Former decoder.

One class for every preset; the sizes come from :class:`~sskd_deploy.config.model.ModelConfig`.
The network runs at exactly ``config.input_size`` (every internal size is a Python int derived
from it, which is what lets the deploy wrapper export with static shapes); preprocessing pads
or resizes to that size before the model sees an image.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sskd_deploy.config.model import ModelConfig
from sskd_deploy.models.encoder import build_encoder
from sskd_deploy.models.pixel_decoder import DPTPixelDecoder
from sskd_deploy.models.transformer_decoder import TransformerDecoder


class MaskFormer(nn.Module):
    """Student and same-family teacher: encoder -> DPT pixel decoder -> Mask2Former decoder.

    ``forward(pixel_values)`` takes normalised float ``(B, 3, H, W)`` at ``config.input_size`` and
    returns a dict:

    - ``pred_logits`` ``(B, K, C+1)``: class logits of the last decoder layer, last = no-object;
    - ``pred_masks`` ``(B, K, H/4, W/4)``: its mask logits;
    - ``aux_outputs``: ``num_layers`` dicts ``{"pred_logits", "pred_masks"}`` of the same shapes, the
      earlier predictions (initial queries, then layers 1..L-1) for deep supervision;
    - ``aux_semantic`` (training, with ``pixel_decoder.semantic_head``): per-pixel class logits
      ``(B, C+1, H/s, W/s)`` on the memory maps, s = 32, 16, 8 (last = background);
    - ``features`` ``(B, encoder.feature_channels, h, w)``: the last tapped encoder map (pixel
      contrastive loss); ``h = ceil(H / encoder.feature_stride)``, likewise ``w``.
    """

    def __init__(self, *, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.input_size = tuple(config.input_size)
        self.encoder = build_encoder(config.encoder)
        self.pixel_decoder = DPTPixelDecoder(
            config=config.pixel_decoder, in_channels=self.encoder.tap_channels, input_size=self.input_size,
            tap_strides=self.encoder.tap_strides,
        )
        self.transformer_decoder = TransformerDecoder(
            config=config.decoder,
            in_channels=config.pixel_decoder.dim,
            mask_dim=config.pixel_decoder.mask_dim,
            num_classes=config.num_classes,
            input_size=self.input_size,
        )
        # Training-only dense class head (config.pixel_decoder.semantic_head): C+1 logits per memory cell.
        self.semantic_head = (nn.Conv2d(config.pixel_decoder.dim, config.num_classes + 1, kernel_size=1)
                              if config.pixel_decoder.semantic_head else None)
        # Derived from the config (which every checkpoint stores): kept out of the state dict.
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 or float ``(B, 3, H, W)`` RGB in 0..255 -> float32 normalised with the config's mean/std."""
        return (images.to(torch.float32) - self.pixel_mean) / self.pixel_std

    def forward(self, pixel_values: Tensor) -> dict[str, Tensor | list]:
        """Segment a normalised batch; see the class docstring for the returned keys and shapes."""
        # A wrong size would otherwise be silently resized inside the pixel decoder. Skipped while
        # tracing (shapes are traced tensors there); torch.export sees static ints and checks it.
        if not torch.jit.is_tracing() and tuple(pixel_values.shape[-2:]) != self.input_size:
            raise ValueError(
                f"{self.config.name}: input is {tuple(pixel_values.shape[-2:])}, the model is built for "
                f"input_size {self.input_size} (resize/pad to it, or build the model with that input_size)"
            )
        taps = self.encoder(pixel_values)
        mask_features, multi_scale = self.pixel_decoder(taps, pixel_values)
        outputs = self.transformer_decoder(multi_scale, mask_features)
        outputs["features"] = taps[-1]
        if self.semantic_head is not None and self.training:
            outputs["aux_semantic"] = [self.semantic_head(level) for level in multi_scale]
        return outputs

    def parameter_groups(self, *, decay_embeddings: bool = False) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split for the backbone learning-rate multiplier: ``{"encoder", "decoder"}``.

        Unless ``decay_embeddings``, the learned embeddings (ViT position embeddings and CLS token,
        decoder queries and level embeddings) go to ``"encoder.no_decay"`` / ``"decoder.no_decay"``:
        weight decay would pull them towards zero, i.e. towards "no position" and identical queries.
        Frozen parameters (``requires_grad=False``) are left out, so the lists can go to an optimizer.
        """
        groups: dict[str, list[nn.Parameter]] = {"encoder": [], "decoder": []}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            group = "encoder" if name.startswith("encoder.") else "decoder"
            if not decay_embeddings and is_embedding(name):
                group += ".no_decay"
            groups.setdefault(group, []).append(param)
        return groups

    def parts(self) -> dict[str, nn.Module]:
        """The sub-networks by name: ``{"encoder", "pixel_decoder", "transformer_decoder"}``, plus
        ``"semantic_head"`` (training only) when the model has one."""
        parts = {
            "encoder": self.encoder,
            "pixel_decoder": self.pixel_decoder,
            "transformer_decoder": self.transformer_decoder,
        }
        if self.semantic_head is not None:
            parts["semantic_head"] = self.semantic_head
        return parts


EMBEDDING_NAMES = ("position_embeddings", "cls_token", "mask_token", "register_tokens", "query_feat", "query_pos",
                   "level_embed")


def is_embedding(name: str) -> bool:
    """Whether parameter ``name`` is a learned embedding (exempt from weight decay by default)."""
    return any(part in EMBEDDING_NAMES for part in name.split("."))


def build_model(config: ModelConfig) -> MaskFormer:
    """A :class:`MaskFormer` for ``config``; loads encoder weights when ``config.encoder.weights`` is set."""
    return MaskFormer(config=config)
