"""Model sizes as typed, frozen configs, and the named presets.

Pure data (no torch): the CLI, the IOSpec and checkpoints read these without building a model.
A preset is a complete :class:`ModelConfig`; a run config may name one and override fields.
The class count is not part of a preset: it comes from the data (``with_classes``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from sskd_deploy.config.types import Section
from sskd_deploy.errors import ConfigError

# ImageNet statistics in 0..255 units: DINOv2 was pretrained with them, so the deploy graph
# normalises uint8 input with exactly these buffers.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class EncoderConfig(Section):
    """The image encoder: a ViT with the DINOv2 architecture (Hugging Face ``Dinov2Model``), or, as a
    control, a small convolutional pyramid (``kind: conv``, the fields ``conv_*`` only)."""

    kind: Literal["vit", "conv"] = "vit"
    conv_widths: tuple[int, int, int, int] = (32, 64, 128, 192)  # kind conv: channels at strides 4/8/16/32
    conv_depths: tuple[int, int, int, int] = (1, 1, 1, 1)  # kind conv: residual blocks per stride
    hidden_size: int = Field(384, ge=8)
    num_layers: int = Field(12, ge=1)
    num_heads: int = Field(6, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    patch_size: int = Field(14, ge=2)
    taps: tuple[int, int, int, int] = (3, 6, 9, 12)  # 1-based blocks whose outputs feed the decoder
    pretrain_image_size: int = Field(518, ge=14)  # sets the position-embedding grid (518/14 = 37)
    layerscale_value: float = 1.0
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    weights: Optional[Path] = None  # a Hugging Face directory or an original DINOv2 .pth; None = random

    @model_validator(mode="after")
    def _check(self) -> EncoderConfig:
        problems = []
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if list(self.taps) != sorted(set(self.taps)) or not 1 <= self.taps[0] <= self.taps[-1] <= self.num_layers:
            problems.append(f"taps {self.taps} must be increasing block numbers in 1..{self.num_layers}")
        if min(self.conv_widths) < 8 or min(self.conv_depths) < 0:
            problems.append(f"conv_widths {self.conv_widths} must be >= 8 and conv_depths {self.conv_depths} >= 0")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class PixelDecoderConfig(Section):
    """DPT-style reassemble + fusion producing strides 4/8/16/32.

    ``conv_path`` adds a convolutional high-resolution branch on the image itself (a ViT-Adapter-style
    spatial prior): its stride-4/8/16/32 maps are added to the reassembled taps before fusion, so
    detail finer than a patch reaches the masks.
    """

    reassemble_dims: tuple[int, int, int, int] = (96, 192, 384, 768)  # per tap, before fusion
    dim: int = Field(256, ge=8)  # fusion width = width of the multi-scale features
    mask_dim: int = Field(256, ge=8)  # width of the stride-4 per-pixel embedding
    # training only: a 1x1 per-pixel class head on the decoder's memory maps (strides 32/16/8), trained
    # with dense cross-entropy against the instance masks' classes; never part of inference or export
    semantic_head: bool = False
    stride4_rcus: int = Field(2, ge=0, le=2)  # residual conv units of the stride-4 fusion (DPT: 2)
    mask_position: bool = False  # add a sine position encoding to the stride-4 map before the mask head
    conv_path: bool = False
    conv_path_widths: tuple[int, int, int, int] = (32, 64, 128, 192)  # branch channels at strides 4..32
    conv_path_depths: tuple[int, int, int, int] = (1, 1, 1, 1)  # residual blocks per stride

    @model_validator(mode="after")
    def _check(self) -> PixelDecoderConfig:
        if min(self.conv_path_widths) < 8 or min(self.conv_path_depths) < 0:
            raise ValueError(f"conv_path_widths {self.conv_path_widths} must be >= 8 and conv_path_depths "
                             f"{self.conv_path_depths} >= 0")
        return self


class DecoderConfig(Section):
    """Mask2Former-style transformer decoder."""

    dim: int = Field(256, ge=8)
    num_layers: int = Field(9, ge=1)
    num_heads: int = Field(8, ge=1)
    ffn_dim: int = Field(2048, ge=8)
    num_queries: int = Field(100, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    # Group DETR: in training, this many independent groups of num_queries queries (self-attention
    # within a group, one-to-one matching per group); inference and export use the first group only.
    query_groups: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> DecoderConfig:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        return self


class ModelConfig(Section):
    """Everything needed to build a model and its deploy contract (given the class names)."""

    name: str = "student-tiny"
    role: Literal["student", "teacher"] = "student"
    encoder: EncoderConfig = EncoderConfig()
    pixel_decoder: PixelDecoderConfig = PixelDecoderConfig()
    decoder: DecoderConfig = DecoderConfig()
    num_classes: int = Field(1, ge=1)  # set from the data by with_classes
    input_size: tuple[int, int] = (192, 256)  # (height, width); multiples of 32
    top_k: int = Field(100, ge=1)  # candidates the deploy wrapper emits per image
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        h, w = self.input_size
        if h % 32 or w % 32 or h < 64 or w < 64:
            raise ValueError(f"input_size {self.input_size} must be multiples of 32, at least 64")
        if self.top_k > self.decoder.num_queries:
            raise ValueError(f"top_k {self.top_k} exceeds decoder.num_queries {self.decoder.num_queries}")
        return self

    def with_classes(self, num_classes: int) -> ModelConfig:
        return self.model_copy(update={"num_classes": num_classes})

    def updated(self, **changes) -> ModelConfig:
        """A validated copy with nested changes, e.g. ``updated(encoder={"weights": p})``."""
        data = self.model_dump()
        for key, value in changes.items():
            nested = isinstance(value, dict) and isinstance(data.get(key), dict)
            data[key] = {**data[key], **value} if nested else value  # an unknown key fails validation
        return ModelConfig.model_validate(data)


def _preset(name: str, role: str, enc: dict, pix: dict, dec: dict, **top) -> ModelConfig:
    return ModelConfig(
        name=name, role=role, encoder=EncoderConfig(**enc), pixel_decoder=PixelDecoderConfig(**pix),
        decoder=DecoderConfig(**dec), **top,
    )


# The tiny presets' pixel-decoder options (all off in student-s / teacher-l, which stay as published).
TINY_DECODER_OPTIONS = dict(conv_path=True, mask_position=True, semantic_head=True, stride4_rcus=0)

PRESETS: dict[str, ModelConfig] = {
    # The paper's student: DINOv2 ViT-S/14, DPT decoder, 9-layer Mask2Former decoder, 100 queries.
    "student-s": _preset(
        "student-s", "student", {}, dict(reassemble_dims=(64, 128, 256, 512)), {}, input_size=(512, 1024)
    ),
    # Trains in minutes on 2 CPU cores at 192x256. From random weights a 4-block ViT alone learns
    # several times slower than a small CNN: the conv path, the mask position code, the semantic
    # head and a 6-layer decoder are what made it learn (README, Training), and one residual-unit
    # pair less at stride 4 pays for them (the stride-4 fusion was over half of a step).
    "student-tiny": _preset(
        "student-tiny", "student",
        dict(hidden_size=96, num_layers=4, num_heads=3, taps=(1, 2, 3, 4), pretrain_image_size=224),
        dict(reassemble_dims=(32, 64, 96, 128), dim=64, mask_dim=64, **TINY_DECODER_OPTIONS),
        dict(dim=64, num_layers=6, num_heads=4, ffn_dim=256, num_queries=20),
        top_k=20,
    ),
    # Same family, DINOv2 ViT-L/14 and a wider decoder: the teacher adapted in stage 1.
    "teacher-l": _preset(
        "teacher-l", "teacher",
        dict(hidden_size=1024, num_layers=24, num_heads=16, taps=(6, 12, 18, 24)),
        dict(reassemble_dims=(256, 512, 1024, 1024), dim=384, mask_dim=384),
        dict(dim=384, num_layers=9, num_heads=8, ffn_dim=3072, num_queries=100),
        input_size=(512, 1024),
    ),
    "teacher-tiny": _preset(
        "teacher-tiny", "teacher",
        dict(hidden_size=192, num_layers=6, num_heads=6, taps=(2, 3, 5, 6), pretrain_image_size=224),
        dict(reassemble_dims=(48, 96, 192, 256), dim=128, mask_dim=128, **TINY_DECODER_OPTIONS),
        dict(dim=128, num_layers=6, num_heads=8, ffn_dim=512, num_queries=30),
        top_k=30,
    ),
}


def model_preset(name: str) -> ModelConfig:
    """The named preset; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise ConfigError(None, [f"model: unknown preset {name!r} (known: {', '.join(PRESETS)})"])
    return PRESETS[name]
