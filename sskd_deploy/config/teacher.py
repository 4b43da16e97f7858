"""The ``train.grounded_sam2`` section: the Grounding DINO + SAM2 foundation-model teacher.

Pure data (no torch, no transformers): the CLI and the train config read it without building the
teacher. Defaults follow METHOD.md section 2 (text prompt of the class names, boxes with score
> 0.3, at most 100, one SAM2 mask per box binarised at 0.5, overlaps resolved).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from sskd_deploy.config.types import PathField, Section

GROUNDED_SAM2 = "grounded-sam2"
# Sub-directories of a Grounded-SAM2 weights directory, each a Hugging Face save_pretrained layout.
GROUNDING_DIR = "grounding_dino"
SAM2_DIR = "sam2"
# What --allow-download fetches when a sub-directory is missing. Grounding DINO's Swin-L checkpoint
# is not published in the transformers format; the largest that is uses Swin-B.
HUB_GROUNDING = "IDEA-Research/grounding-dino-base"
HUB_SAM2 = "facebook/sam2.1-hiera-large"

TeacherPart = Literal[
    "grounding_backbone", "grounding_text", "grounding_encoder", "grounding_decoder", "grounding_heads",
    "sam2_image_encoder", "sam2_neck", "sam2_prompt_encoder", "sam2_mask_decoder",
]
TEACHER_PARTS: tuple[str, ...] = TeacherPart.__args__  # type: ignore[attr-defined]


class GroundedSam2Config(Section):
    """How the Grounded-SAM2 teacher labels images and which of its parts stage 1 adapts.

    Attributes:
        weights: directory with ``grounding_dino/`` (model, config, tokenizer) and ``sam2/`` (model,
            config), as ``save_pretrained`` writes them. ``None``: must be given on the command line.
        allow_download: fetch missing parts from the Hub (``hub_grounding_dino``/``hub_sam2``) with
            ``from_pretrained``; otherwise a missing file is an error listing what is needed.
        box_threshold: keep a box when its best class score (max token sigmoid over the class
            name's tokens) is above this.
        max_instances: at most this many boxes per image, highest scores first.
        mask_threshold: a pixel belongs to a SAM2 mask where its probability is above this.
        min_area: drop pseudo-instances with fewer pixels (after overlaps are resolved).
        input_size: ``(H, W)`` Grounding DINO sees (letterboxed); ``None``: the run's input size.
            SAM2 sees the same frame resized to its own square ``image_size``.
        batch_size: images per labeling call.
        trainable: parts stage 1 updates; the rest are frozen. L_pxl acts on SAM2's image embedding
            (the stride-16 map its mask decoder reads), so it needs ``sam2_neck`` (or
            ``sam2_image_encoder``) to reach the teacher.
        box_noise: stage-1 SAM2 prompts are the ground-truth boxes with each side moved by up to this
            fraction of the box size (uniform), so the mask decoder learns from imperfect boxes as
            Grounding DINO produces them.
        mask_weight, dice_weight: SAM2 mask loss = mask_weight * BCE + dice_weight * Dice; the box
            loss is Grounding DINO's own (focal class + L1 + GIoU, Hungarian-matched, deep supervision).
    """

    weights: Optional[PathField] = None
    allow_download: bool = False
    hub_grounding_dino: str = HUB_GROUNDING
    hub_sam2: str = HUB_SAM2
    box_threshold: float = Field(0.3, ge=0, le=1)
    max_instances: int = Field(100, ge=1)
    mask_threshold: float = Field(0.5, gt=0, lt=1)
    min_area: int = Field(16, ge=0)
    input_size: Optional[tuple[int, int]] = None
    batch_size: int = Field(4, ge=1)
    trainable: tuple[TeacherPart, ...] = ("grounding_decoder", "grounding_heads", "sam2_neck", "sam2_mask_decoder")
    box_noise: float = Field(0.1, ge=0, lt=0.5)
    mask_weight: float = Field(5.0, ge=0)
    dice_weight: float = Field(5.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> GroundedSam2Config:
        if self.input_size is not None:
            h, w = self.input_size
            if h % 32 or w % 32 or h < 64 or w < 64:
                raise ValueError(f"input_size {self.input_size} must be multiples of 32, at least 64")
        if len(set(self.trainable)) != len(self.trainable):
            raise ValueError(f"trainable lists a part twice: {list(self.trainable)}")
        return self
