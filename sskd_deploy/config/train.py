"""The ``train`` section of a run config: which models, which stages, their schedules and losses.

Every default METHOD.md gives is a field here (lambda_pxl 0.1, lambda_semi 1, R = 200 negatives,
temperature 0.3 -> 0.07, AdamW, backbone lr x0.1, poly schedule, gradient clipping, AMP on GPU,
Guided-Distillation-style pseudo-label thresholds). Step counts are sized for the CPU demo on the
synthetic world; the paper's schedules (90k iterations, batch 8) are a config change away.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from sskd_deploy.config.teacher import GROUNDED_SAM2, GroundedSam2Config
from sskd_deploy.config.types import PathField, Section
from sskd_deploy.weights import SHIPPED, SHIPPED_WHOLE, has_shipped, is_keyword, shipped_path

STAGES = ("teacher_1a", "teacher_1b", "student_2", "student_3", "supervised")


class StageSchedule(Section):
    """Length and batch of one stage; ``lr`` is the head learning rate (the encoder gets lr x mult)."""

    steps: int = Field(200, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-4, gt=0)


class OptimConfig(Section):
    weight_decay: float = Field(0.05, ge=0)
    decay_embeddings: bool = False  # weight decay on position/token/query/level embeddings too (off: exempt)
    # Encoder lr = lr x this. None: 0.1 (METHOD.md) when the encoder starts from pretrained weights,
    # 1.0 when it is randomly initialised (a random encoder has nothing to preserve).
    backbone_lr_mult: Optional[float] = Field(None, ge=0)
    warmup_steps: int = Field(20, ge=0)
    poly_power: float = Field(0.9, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    amp: bool = True  # used only on CUDA
    checkpoint_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)


class PixelContrastConfig(Section):
    """L_pxl (METHOD.md section 4)."""

    num_negatives: int = Field(200, ge=1)
    sampling: Literal["uniform", "mask", "class", "fused"] = "fused"
    temperature_start: float = Field(0.3, gt=0)
    temperature_end: float = Field(0.07, gt=0)
    temperature_schedule: Literal["anneal", "fixed"] = "anneal"
    hidden_dim: int = Field(256, ge=1)
    embed_dim: int = Field(128, ge=1)
    max_anchors: Optional[int] = Field(1024, ge=1)
    # The stop-gradient strong branch's projection: the weak head's current weights (shared) or their EMA.
    strong_head: Literal["shared", "ema"] = "shared"
    ema_momentum: float = Field(0.99, ge=0, lt=1)


class PseudoLabelSection(Section):
    score_threshold: float = Field(0.5, ge=0, le=1)
    class_threshold: float = Field(0.7, ge=0, le=1)
    mask_threshold: float = Field(0.5, gt=0, lt=1)
    min_area: int = Field(16, ge=0)
    max_instances: int = Field(50, ge=1)
    resolve_overlaps: bool = True
    batch_size: int = Field(8, ge=1)
    # What stage 1b and stage 2 train on for the unlabeled images: the teacher's pseudo-labels (the method),
    # or their withheld ground truth (`truth`: a diagnostic, the ceiling a perfect teacher would give at this
    # budget; only the synthetic world keeps those labels).
    source: Literal["teacher", "truth"] = "teacher"


class AugmentConfig(Section):
    scale_range: tuple[float, float] = (0.75, 1.25)
    hflip_prob: float = Field(0.5, ge=0, le=1)
    copy_paste: float = Field(0.0, ge=0, le=1)  # probability of pasting another image's instances on top


class TrainConfig(Section):
    student: str = "student-tiny"
    teacher: str = "teacher-tiny"
    input_size: Optional[tuple[int, int]] = (192, 256)  # overrides the presets' size; None keeps it
    # Pretrained starts: "shipped" (the package's stand-ins pretrained on the source world, tiny presets
    # only: the whole teacher-tiny; the student-tiny encoder alone, the paper's setting), "shipped-whole"
    # (student-tiny pretrained whole: the default, see README "The foundation stand-ins"), a path (encoder
    # weights, a Hugging Face DINOv2 dir or .pth, or a whole sskd-deploy checkpoint whose class head is
    # sliced to the data's class names), or None (random).
    student_weights: Optional[PathField] = Path(SHIPPED_WHOLE)
    teacher_weights: Optional[PathField] = Path(SHIPPED)
    # Preset fields overridden by the run, e.g. {encoder: {patch_size: 16}, pixel_decoder: {conv_path: true}};
    # validated against the preset here and stored in every checkpoint (ablations are configs, not edits).
    student_model: Optional[dict[str, Any]] = None
    teacher_model: Optional[dict[str, Any]] = None
    # train.teacher: grounded-sam2 -> the foundation-model teacher (Grounding DINO + SAM2) set up here
    grounded_sam2: GroundedSam2Config = GroundedSam2Config()
    stages: tuple[str, ...] = STAGES
    lambda_pxl: float = Field(0.1, ge=0)
    lambda_semi: float = Field(1.0, ge=0)
    # Point-sampled mask losses (Mask2Former: 12544 at 512x1024); None = whole stride-4 masks. 4096 at the
    # demo's 192x256 (3072 stride-4 cells): importance-sampled points measured better than whole masks.
    num_points: Optional[int] = Field(4096, ge=1)
    # Matching class cost: ce (-log p) or prob (-p, the published matcher). From random weights, prob
    # left the class head at the class marginal for 1000+ steps (queries carry no class information
    # until the features do) while ce let classes and masks both learn; with pretrained features
    # prob is the published choice.
    class_cost: Literal["ce", "prob"] = "ce"
    semantic_weight: float = Field(1.0, ge=0)  # auxiliary class loss (models with pixel_decoder.semantic_head)
    semantic_loss: Literal["pooled", "dense", "both"] = "pooled"  # per instance over its mask, per cell, or both
    # Sized so `train` takes under 12 minutes on 2 CPU cores (measured 10). For 1b and stage 2,
    # batch_size counts labeled + pseudo-labeled pairs, so 2 means 4 images per step. The learning
    # rates are fine-tuning rates (METHOD.md: AdamW 5e-5..1e-4), for the default start from whole
    # pretrained models: at 1e-3, a from-scratch rate, fine-tuning first wrecked the shipped student
    # (zero-shot 23.4 -> 18.4 AP at step 200) and ended below its start. From random weights
    # (`*_weights: null`) use about 1e-3 (configs/supervised_long.yaml).
    teacher_1a: StageSchedule = StageSchedule(steps=150, batch_size=4, lr=1e-4)
    teacher_1b: StageSchedule = StageSchedule(steps=120, batch_size=2, lr=1e-4)
    student_2: StageSchedule = StageSchedule(steps=400, batch_size=2, lr=1e-4)
    student_3: StageSchedule = StageSchedule(steps=100, batch_size=4, lr=5e-5)
    supervised: Optional[StageSchedule] = None  # None: stage 2 + stage 3 steps, stage 2's batch and lr
    optim: OptimConfig = OptimConfig()
    pxl: PixelContrastConfig = PixelContrastConfig()
    pseudo: PseudoLabelSection = PseudoLabelSection()
    augment: AugmentConfig = AugmentConfig()
    eval_batch_size: int = Field(8, ge=1)
    eval_every: int = Field(200, ge=0)  # validate every N steps of a stage (mask AP into metrics.jsonl); 0: at the end only
    eval_train_images: int = Field(0, ge=0)  # also score the first N labeled training images (fit vs generalisation)
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in value if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
        return value

    @field_validator("student")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        from sskd_deploy.config.model import PRESETS

        if value not in PRESETS:
            raise ValueError(f"unknown model preset {value!r}; known: {', '.join(PRESETS)}")
        return value

    @field_validator("teacher")
    @classmethod
    def _known_teacher(cls, value: str) -> str:
        from sskd_deploy.config.model import PRESETS

        if value not in PRESETS and value != GROUNDED_SAM2:
            raise ValueError(f"unknown teacher {value!r}; known: {', '.join([*PRESETS, GROUNDED_SAM2])}")
        return value

    @model_validator(mode="after")
    def _shipped_weights(self) -> TrainConfig:
        problems = []
        for role, preset in (("student", self.student), ("teacher", self.teacher)):
            keyword = self._shipped_keyword(role)
            if keyword and preset != GROUNDED_SAM2 and not has_shipped(role, preset, keyword):
                problems.append(f"{role}_weights: {keyword}: no such shipped weights for {preset!r} as {role} (the "
                                "tiny presets have `shipped`, student-tiny also `shipped-whole`); set "
                                f"train.{role}_weights to a weights path, or null for random initialisation")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _shipped_keyword(self, role: str) -> Optional[str]:
        value = self.student_weights if role == "student" else self.teacher_weights
        return str(value) if is_keyword(value) else None

    def weights_path(self, role: str) -> Optional[Path]:
        """The ``role``'s starting weights as a path ("shipped" resolved to the package's file), or None."""
        value = self.student_weights if role == "student" else self.teacher_weights
        if value is None:
            return None
        if keyword := self._shipped_keyword(role):
            return shipped_path(role, self.student if role == "student" else self.teacher, keyword)
        return Path(value)

    @model_validator(mode="after")
    def _model_overrides(self) -> TrainConfig:
        from sskd_deploy.config.model import PRESETS

        problems = []
        for role, preset, changes in (("student_model", self.student, self.student_model),
                                      ("teacher_model", self.teacher, self.teacher_model)):
            if not changes or preset not in PRESETS:
                continue
            try:
                PRESETS[preset].updated(**changes)
            except (ValueError, TypeError, KeyError) as err:  # pydantic's ValidationError is a ValueError
                problems.append(f"{role} (on preset {preset}): {_one_line(err)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def model_overrides(self, role: str) -> dict[str, Any]:
        """The run's changes to the ``role`` ("student" or "teacher") preset (empty: the preset as is)."""
        return dict((self.student_model if role == "student" else self.teacher_model) or {})

    def backbone_lr_mult_for(self, role: str) -> float:
        """The encoder lr multiplier of ``role`` ("student" or "teacher"), resolving ``None``."""
        weights = self.student_weights if role == "student" else self.teacher_weights
        return self.encoder_lr_mult(pretrained=weights is not None)

    def encoder_lr_mult(self, *, pretrained: bool) -> float:
        """The one encoder lr rule: ``optim.backbone_lr_mult`` when set, else 0.1 for an encoder that starts
        from pretrained weights and 1.0 for a randomly initialised one (it has nothing to preserve)."""
        if self.optim.backbone_lr_mult is not None:
            return self.optim.backbone_lr_mult
        return 0.1 if pretrained else 1.0

    def supervised_schedule(self) -> StageSchedule:
        if self.supervised is not None:
            return self.supervised
        total = self.student_2.steps + self.student_3.steps
        return StageSchedule(steps=total, batch_size=self.student_2.batch_size, lr=self.student_2.lr)


def _one_line(err: Exception) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):  # pydantic: "encoder.patch_size: Input should be ..." per error
        return "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in errors())
    return str(err)
