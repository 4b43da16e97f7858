"""Model sizes as typed, frozen configs, and the named presets.

Pure data (no torch): the CLI, the IOSpec and checkpoints read these without building a model.
A preset is a complete :class:`ModelConfig`; a run config may name one and override fields.
The class count is not part of a preset: it comes from the data (``with_classes``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from sskd_deploy.config_types import Section
from sskd_deploy.errors import ConfigError

# ImageNet statistics in 0..255 units: DINOv2 was pretrained with them, so the deploy graph
# normalises uint8 input with exactly these buffers.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class EncoderConfig(Section):
    """A ViT with the DINOv2 architecture (Hugging Face ``Dinov2Model``)."""

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
        if problems:
            raise ValueError("; ".join(problems))
        return self


class PixelDecoderConfig(Section):
    """DPT-style reassemble + fusion producing strides 4/8/16/32."""

    reassemble_dims: tuple[int, int, int, int] = (96, 192, 384, 768)  # per tap, before fusion
    dim: int = Field(256, ge=8)  # fusion width = width of the multi-scale features
    mask_dim: int = Field(256, ge=8)  # width of the stride-4 per-pixel embedding


class DecoderConfig(Section):
    """Mask2Former-style transformer decoder."""

    dim: int = Field(256, ge=8)
    num_layers: int = Field(9, ge=1)
    num_heads: int = Field(8, ge=1)
    ffn_dim: int = Field(2048, ge=8)
    num_queries: int = Field(100, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)

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
            data[key] = {**data[key], **value} if isinstance(value, dict) else value
        return ModelConfig.model_validate(data)


def _preset(name: str, role: str, enc: dict, pix: dict, dec: dict, **top) -> ModelConfig:
    return ModelConfig(
        name=name, role=role, encoder=EncoderConfig(**enc), pixel_decoder=PixelDecoderConfig(**pix),
        decoder=DecoderConfig(**dec), **top,
    )


PRESETS: dict[str, ModelConfig] = {
    # The paper's student: DINOv2 ViT-S/14, DPT decoder, 9-layer Mask2Former decoder, 100 queries.
    "student-s": _preset(
        "student-s", "student", {}, dict(reassemble_dims=(64, 128, 256, 512)), {}, input_size=(512, 1024)
    ),
    # Trains in minutes on 2 CPU cores at 192x256.
    "student-tiny": _preset(
        "student-tiny", "student",
        dict(hidden_size=96, num_layers=4, num_heads=3, taps=(1, 2, 3, 4), pretrain_image_size=224),
        dict(reassemble_dims=(32, 64, 96, 128), dim=64, mask_dim=64),
        dict(dim=64, num_layers=3, num_heads=4, ffn_dim=256, num_queries=20),
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
        dict(reassemble_dims=(48, 96, 192, 256), dim=128, mask_dim=128),
        dict(dim=128, num_layers=4, num_heads=8, ffn_dim=512, num_queries=30),
        top_k=30,
    ),
}


def model_preset(name: str) -> ModelConfig:
    """The named preset; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise ConfigError(None, [f"model: unknown preset {name!r} (known: {', '.join(PRESETS)})"])
    return PRESETS[name]
