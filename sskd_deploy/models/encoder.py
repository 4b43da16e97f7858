"""The image encoder: a ViT with the DINOv2 architecture whose four tapped blocks feed the pixel decoder.

Built from the Hugging Face ``Dinov2Backbone`` so that its parameter names are the ones
``transformers`` checkpoints use and its blocks are the reference implementation. The backbone
returns exactly what a DPT-style decoder needs: the outputs of the blocks named by
``out_indices`` (1-based; index 0 would be the patch embeddings), each passed through the final
layernorm (as DPT and Depth-Anything do), with the CLS token dropped and the patch tokens reshaped
to a ``(B, hidden, H // p, W // p)`` map.

Export: the forward has no data-dependent control flow. The only branches (in the position
embedding interpolation and the reshape) depend on the input *shape*, which is static in the
deploy graph; ``torch.onnx.export`` (TorchScript and dynamo) and ONNX Runtime agree with eager.
The position embeddings of the pretraining grid (``pretrain_image_size // patch_size`` squared)
are interpolated bicubically to the input's patch grid in every forward, so any input size works.

Geometry: a ViT's patch conv sees ``floor(H / p)`` x ``floor(W / p)`` patches and drops the
remainder pixels at the bottom and right (patch 14 at 192x256 covers only 182x252 pixels). The
encoder therefore zero-pads the normalised input (zero = the mean colour) at the bottom and right to
``ceil(H / p) * p`` by ``ceil(W / p) * p``: token ``(i, j)`` covers pixels ``[p i, p (i + 1))`` x
``[p j, p (j + 1))`` of the image, and the grid covers all of it. Every consumer maps tokens to
pixels by that coverage (:mod:`sskd_deploy.models.pixel_decoder`), never by stretching the grid.

Every encoder kind exposes the same description of its outputs: ``tap_strides`` (image pixels per
cell of each tap), ``tap_channels``, and ``feature_stride`` / ``feature_channels`` of the last tap,
which is what the pixel contrastive loss embeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Dinov2Backbone, Dinov2Config

from sskd_deploy.config.model import EncoderConfig
from sskd_deploy.errors import ConfigError, InputError
from sskd_deploy.models.conv import PYRAMID_STRIDES, ConvPyramid
from sskd_deploy.models.weights import load_encoder_weights


def dinov2_config(config: EncoderConfig) -> Dinov2Config:
    """The ``transformers`` configuration of the encoder described by ``config``."""
    if config.mlp_ratio != int(config.mlp_ratio):
        # transformers 5 types Dinov2Config.mlp_ratio as int; every DINOv2 model uses 4.
        raise ConfigError(None, [f"encoder.mlp_ratio {config.mlp_ratio} must be a whole number for Dinov2"])
    return Dinov2Config(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        mlp_ratio=int(config.mlp_ratio),
        patch_size=config.patch_size,
        image_size=config.pretrain_image_size,
        layerscale_value=config.layerscale_value,
        drop_path_rate=config.drop_path_rate,
        # The mask token only serves iBOT masking during pretraining; left out it cannot become an
        # unused parameter that DistributedDataParallel complains about.
        use_mask_token=False,
        out_indices=list(config.taps),
        apply_layernorm=True,
        reshape_hidden_states=True,
    )


class DinoV2Encoder(nn.Module):
    """DINOv2 ViT returning four intermediate feature maps.

    Attributes:
        hidden_size: channels of every returned map.
        patch_size: stride of the returned maps relative to the input.
        num_taps: always 4 (``config.taps``).
        tap_strides, tap_channels: ``(patch_size,) * 4`` and ``(hidden_size,) * 4``.
        feature_stride, feature_channels: those of the last tap.
        backbone: the ``transformers.Dinov2Backbone``; ``backbone.set_attn_implementation("eager")``
            switches from the default SDPA attention to plain matmul + softmax if an exporter needs it.
        weights_report: the report of the last :meth:`load_pretrained` (None while randomly initialised),
            for run manifests.
    """

    num_taps = 4

    def __init__(self, *, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.patch_size = config.patch_size
        self.tap_strides = (config.patch_size,) * self.num_taps
        self.tap_channels = (config.hidden_size,) * self.num_taps
        self.feature_stride, self.feature_channels = config.patch_size, config.hidden_size
        self.backbone = Dinov2Backbone(dinov2_config(config))  # random init (transformers' ViT init)
        self.weights_report: Optional[dict] = None

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid ``(ceil(H / p), ceil(W / p))`` of an input of ``height`` x ``width`` pixels."""
        return -(-height // self.patch_size), -(-width // self.patch_size)

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        """Encode normalised images.

        Args:
            pixel_values: float ``(B, 3, H, W)``, already normalised with the ImageNet statistics.
        Returns:
            ``num_taps`` tensors ``(B, hidden_size, ceil(H / p), ceil(W / p))``: the outputs of blocks
            ``config.taps`` (1-based) after the final layernorm, CLS token dropped. The input is
            zero-padded at the bottom/right to whole patches first (see the module docstring).
        """
        height, width = pixel_values.shape[-2:]
        grid_h, grid_w = self.grid_size(int(height), int(width))
        pad_h, pad_w = grid_h * self.patch_size - int(height), grid_w * self.patch_size - int(width)
        if pad_h or pad_w:  # shape-dependent only: static in an exported graph
            pixel_values = F.pad(pixel_values, (0, pad_w, 0, pad_h))
        return list(self.backbone(pixel_values).feature_maps)

    def load_pretrained(self, path: Path) -> dict:
        """Load DINOv2 weights from a Hugging Face directory or an original ``.pth`` file.

        Returns the report of :func:`sskd_deploy.models.weights.load_encoder_weights`: keys
        ``source``, ``format``, ``loaded``, ``interpolated`` (key -> ``"old shape -> new shape"``),
        ``ignored``. Raises :class:`~sskd_deploy.errors.InputError` naming the file on any mismatch.
        """
        self.weights_report = load_encoder_weights(self.backbone, Path(path), config=self.config)
        return self.weights_report


class ConvEncoder(nn.Module):
    """The control encoder (``kind: conv``): a convolutional pyramid at strides 4/8/16/32.

    Same interface as :class:`DinoV2Encoder`; there are no pretrained weights for it.
    """

    num_taps = 4

    def __init__(self, *, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.pyramid = ConvPyramid(widths=config.conv_widths, depths=config.conv_depths)
        self.tap_strides, self.tap_channels = PYRAMID_STRIDES, tuple(config.conv_widths)
        self.feature_stride, self.feature_channels = PYRAMID_STRIDES[-1], config.conv_widths[-1]
        self.hidden_size = config.conv_widths[-1]
        self.weights_report: Optional[dict] = None

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        """Normalised ``(B, 3, H, W)`` (multiples of 32) -> four maps ``(B, conv_widths[i], H / s, W / s)``."""
        return self.pyramid(pixel_values)

    def load_pretrained(self, path: Path) -> dict:
        raise InputError(Path(path), "encoder.kind 'conv' (the control) has no pretrained weights to load")


Encoder = Union[DinoV2Encoder, ConvEncoder]


def build_encoder(config: EncoderConfig) -> Encoder:
    """The encoder for ``config``, with ``config.weights`` loaded when set (random init otherwise)."""
    encoder = ConvEncoder(config=config) if config.kind == "conv" else DinoV2Encoder(config=config)
    if config.weights is not None:
        encoder.load_pretrained(config.weights)
    return encoder
