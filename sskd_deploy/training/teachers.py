"""The one teacher interface of the stage recipes, and what :func:`~sskd_deploy.training.stages.fit`
needs from any model a stage trains.

:class:`Trainee` is what ``fit`` asks of the model kind it trains: its parameter groups, its L_pxl
module, its step of J, whether its encoder starts pretrained (the one encoder-lr rule applies),
how it validates, saves and is scored on the val split. :class:`StageTeacher` adds what the teacher
stages and the pseudo-labeling need: theta_T0, the zero-shot row, and the labeler a finished stage's
checkpoint makes. Two teachers implement it:

- :class:`MaskFormerStageTeacher`: the same-family teachers (``teacher-tiny``, ``teacher-l``); theta_T0
  is :meth:`TrainContext.initial_weights` (a fresh model, or a whole pretrained teacher sliced to the
  data's class names, which then has a zero-shot row). The student is the same kind of model:
  :class:`MaskFormerTrainee` with the ``"student"`` role.
- :class:`GroundedSam2StageTeacher`: Grounding DINO + SAM2 (:mod:`sskd_deploy.training.grounded`).

:func:`make_teacher` picks one from ``train.teacher``; nothing else branches on the teacher kind.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import nn

from sskd_deploy.errors import SSKDError
from sskd_deploy.evaluation import EvalResult
from sskd_deploy.io import atomic_directory, atomic_write_json
from sskd_deploy.models.checkpoint import save_checkpoint
from sskd_deploy.models.deploy import DeployWrapper
from sskd_deploy.models.grounded_sam2 import save_grounded_sam2
from sskd_deploy.models.inference import evaluate_wrapper
from sskd_deploy.models.teacher import MaskFormerTeacher
from sskd_deploy.provenance import hash_file
from sskd_deploy.config.layout import CHECKPOINT
from sskd_deploy.config.teacher import GROUNDED_SAM2
from sskd_deploy.training.context import TrainContext
from sskd_deploy.training.contrastive import PixelContrast
from sskd_deploy.training.grounded import (
    WEIGHTS,
    evaluate_on_val,
    grounded_labeler,
    initial_teacher,
    make_teacher_step,
)
from sskd_deploy.training.loop import EvalFn, StepFn
from sskd_deploy.training.objective import ObjectiveWeights, make_step
from sskd_deploy.training.pseudo_labels import PseudoLabelConfig

ZERO_SHOT = "zero_shot_eval.json"  # in teacher_1a/: theta_T0 on val, kept across resumes


@runtime_checkable
class Trainee(Protocol):
    """What :func:`~sskd_deploy.training.stages.fit` needs from the kind of model a stage trains."""

    role: str  # "teacher" or "student" (the completion record's "role")
    checkpoint: str  # the trained model's name in the stage directory (the record's "checkpoint")
    record: ClassVar[Mapping[str, Any]]  # fields naming the model kind in the completion record
    tag: str  # after the stage's name in its completion log line

    def check(self, ctx: TrainContext, stage: str, model: nn.Module) -> None:
        """Refuse (raise) or warn about a stage this model cannot train as configured, before it starts."""
        ...

    def pretrained(self, ctx: TrainContext) -> bool:
        """Whether the encoder starts from pretrained weights (the input of the encoder lr rule)."""
        ...

    def parameter_groups(self, ctx: TrainContext, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        """The trainable parameters by optimizer group (``"encoder"``: lr x the encoder multiplier)."""
        ...

    def pixel_contrast(self, ctx: TrainContext, model: nn.Module) -> PixelContrast:
        """L_pxl's module over this model's dense features."""
        ...

    def step(self, ctx: TrainContext, *, pxl: PixelContrast | None, weights: ObjectiveWeights,
             total_steps: int) -> StepFn:
        """The training step of J for this model."""
        ...

    def validator(self, ctx: TrainContext) -> EvalFn | None:
        """Validation during the stage (every ``train.eval_every`` steps), or None for none."""
        ...

    def save(self, ctx: TrainContext, stage: str, model: nn.Module, steps: int) -> None:
        """Write the trained model to ``<stage dir>/<checkpoint>``."""
        ...

    def evaluate(self, ctx: TrainContext, model: nn.Module, path: Path) -> tuple[EvalResult, dict | None]:
        """Mask AP on the val split, written to ``path``; with the values of the final metrics line
        (``None``: this model adds none)."""
        ...


@runtime_checkable
class StageTeacher(Trainee, Protocol):
    """What the teacher stages (1a, 1b) and the pseudo-labeling (for 1b and 2) need from a teacher."""

    def initial(self, ctx: TrainContext) -> nn.Module:
        """theta_T0, loaded afresh (stage 1b re-initialises to exactly it)."""
        ...

    def zero_shot(self, ctx: TrainContext, model: nn.Module) -> dict[str, Any]:
        """Score theta_T0 (``model``) on val before any adaptation, once (``teacher_1a/zero_shot_eval.json``);
        the completion record's zero-shot fields, ``{}`` where this teacher has no zero-shot row."""
        ...

    def labeler(self, ctx: TrainContext, checkpoint: Path) -> tuple[Any, dict[str, Any]]:
        """The teacher a stage wrote at ``checkpoint`` (its record's ``checkpoint``) and its pseudo-label
        store settings: ``{"teacher_hash", "input_size", "cfg"}``."""
        ...

    def thresholds(self, ctx: TrainContext) -> str:
        """The labeling thresholds by their config names (for the warning when few pseudo-instances
        clear them)."""
        ...


def make_teacher(name: str) -> StageTeacher:
    """The teacher of ``train.teacher`` ``name``: Grounded-SAM2, else a same-family MaskFormer preset."""
    return GroundedSam2StageTeacher() if name == GROUNDED_SAM2 else MaskFormerStageTeacher()


def zero_shot_fields(path: Path) -> dict[str, Any]:
    """The completion record's zero-shot fields from ``zero_shot_eval.json`` (``{}`` while it is missing)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {"zero_shot_ap": data.get("ap"), "zero_shot_ap50": data.get("ap50")}


# -- MaskFormer: the student and the same-family teachers ----------------------------------------------

def validation_metrics(ctx: TrainContext, model: nn.Module, role: str):
    """Mask AP (points) through the deploy wrapper on val and, with ``train.eval_train_images``, on the
    first labeled training images:
    ``({"val_ap", "val_ap50", ["train_ap", "train_ap50"]}, val EvalResult)``."""
    config = ctx.model_config(role)
    wrapper = DeployWrapper(model=model, spec=ctx.spec(config))
    val, _ = evaluate_wrapper(wrapper, ctx.data.val, batch_size=ctx.train.eval_batch_size, device=ctx.device)
    values = {"val_ap": round(100 * val.ap, 2), "val_ap50": round(100 * val.ap50, 2)}
    count = min(ctx.train.eval_train_images, len(ctx.data.labeled))
    if count:
        seen, _ = evaluate_wrapper(wrapper, ctx.data.labeled.subset(range(count)),
                                   batch_size=ctx.train.eval_batch_size, device=ctx.device)
        values.update(train_ap=round(100 * seen.ap, 2), train_ap50=round(100 * seen.ap50, 2))
    return values, val


class MaskFormerTrainee:
    """A MaskFormer of the ``role``'s preset: L_sup is the set criterion, L_pxl acts on the encoder's last
    feature map, and the model is scored through the deploy wrapper (also during the stage)."""

    checkpoint = CHECKPOINT
    record: ClassVar[Mapping[str, Any]] = {}
    tag = ""

    def __init__(self, role: str) -> None:
        self.role = role

    def check(self, ctx: TrainContext, stage: str, model: nn.Module) -> None:
        return None

    def pretrained(self, ctx: TrainContext) -> bool:
        return ctx.train.weights_path(self.role) is not None

    def parameter_groups(self, ctx: TrainContext, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        return model.parameter_groups(decay_embeddings=ctx.train.optim.decay_embeddings)

    def pixel_contrast(self, ctx: TrainContext, model: nn.Module) -> PixelContrast:
        return PixelContrast.from_config(ctx.train.pxl, in_channels=model.encoder.feature_channels,
                                         patch_size=model.encoder.feature_stride)

    def step(self, ctx: TrainContext, *, pxl: PixelContrast | None, weights: ObjectiveWeights,
             total_steps: int) -> StepFn:
        return make_step(criterion=ctx.criterion(), pxl=pxl, weights=weights, total_steps=total_steps,
                         generator_seed=ctx.config.run.seed)

    def validator(self, ctx: TrainContext) -> EvalFn | None:
        return lambda net: validation_metrics(ctx, net, self.role)[0]

    def save(self, ctx: TrainContext, stage: str, model: nn.Module, steps: int) -> None:
        config = ctx.model_config(self.role)
        save_checkpoint(ctx.stage_dir(stage) / self.checkpoint, model=model, config=config,
                        spec=ctx.spec(config), extra={"stage": stage, "steps": steps})

    def evaluate(self, ctx: TrainContext, model: nn.Module, path: Path) -> tuple[EvalResult, dict | None]:
        values, metrics = validation_metrics(ctx, model.eval(), self.role)
        atomic_write_json(path, metrics.to_dict(), indent=2)
        return metrics, values

    def zero_shot_in(self, ctx: TrainContext, model: nn.Module, stage: str) -> dict[str, Any]:
        """Score a whole pretrained starting model (``model``, sliced to the data's names) on val before
        ``stage`` trains it, once (``<stage>/zero_shot_eval.json``); the completion record's zero-shot
        fields, ``{}`` when the role starts from random weights or an encoder alone."""
        source = ctx.whole_model(self.role)
        if source is None:
            return {}
        path = ctx.stage_dir(stage) / ZERO_SHOT
        if ctx.is_main and not path.is_file():
            _, metrics = validation_metrics(ctx, model.eval(), self.role)
            model.train()
            atomic_write_json(path, {**metrics.to_dict(), "weights": str(source),
                                     "classes": list(ctx.class_names)}, indent=2)
            ctx.log(f"{self.role} zero-shot by name on val: mask AP {100 * metrics.ap:.1f}, "
                    f"AP50 {100 * metrics.ap50:.1f}")
        return zero_shot_fields(path)


class MaskFormerStageTeacher(MaskFormerTrainee):
    """The same-family teacher (``teacher-tiny``, ``teacher-l``): theta_T0 from
    :meth:`TrainContext.initial_weights`; from a whole pretrained teacher, that model sliced to the data's
    class names, scored zero-shot by name before stage 1a; it pseudo-labels with ``train.pseudo``'s rule."""

    def __init__(self) -> None:
        super().__init__("teacher")

    def initial(self, ctx: TrainContext) -> nn.Module:
        return ctx.load(ctx.initial_weights("teacher"), "teacher")

    def zero_shot(self, ctx: TrainContext, model: nn.Module) -> dict[str, Any]:
        return self.zero_shot_in(ctx, model, "teacher_1a")

    def labeler(self, ctx: TrainContext, checkpoint: Path) -> tuple[MaskFormerTeacher, dict[str, Any]]:
        teacher = MaskFormerTeacher(model=ctx.load(checkpoint, "teacher").eval(), criterion=ctx.criterion())
        p = ctx.train.pseudo
        cfg = PseudoLabelConfig(
            score_threshold=p.score_threshold, class_threshold=p.class_threshold,
            mask_threshold=p.mask_threshold, min_area=p.min_area, max_instances=p.max_instances,
            resolve_overlaps=p.resolve_overlaps, batch_size=p.batch_size,
        )
        return teacher, {"teacher_hash": hash_file(checkpoint),
                         "input_size": tuple(ctx.model_config("teacher").input_size), "cfg": cfg}

    def thresholds(self, ctx: TrainContext) -> str:
        p = ctx.train.pseudo
        return f"train.pseudo: class {p.class_threshold}, score {p.score_threshold}"


# -- Grounded-SAM2 ------------------------------------------------------------------------------------

class GroundedSam2StageTeacher:
    """Grounding DINO + SAM2 (``train.teacher: grounded-sam2``): theta_T0 is ``train.grounded_sam2.weights``,
    always scored zero-shot; only the configured parts train, in one process; L_pxl acts on SAM2's image
    embedding; stages keep the teacher as a ``weights/`` directory, scored by its hard labels on val."""

    role = "teacher"
    checkpoint = WEIGHTS
    record: ClassVar[Mapping[str, Any]] = {"teacher": GROUNDED_SAM2}
    tag = f" ({GROUNDED_SAM2})"

    def check(self, ctx: TrainContext, stage: str, model: nn.Module) -> None:
        if ctx.world_size > 1:
            raise SSKDError("the Grounded-SAM2 teacher adapts in a single process; "
                            "run stage 1 without torchrun")
        if not any(p.requires_grad for p in model.parameters()):
            raise SSKDError(f"train.grounded_sam2.trainable is empty: stage {stage} would train nothing")
        trainable = set(ctx.train.grounded_sam2.trainable)
        if ctx.train.lambda_pxl > 0 and not ({"sam2_neck", "sam2_image_encoder"} & trainable):
            ctx.log("[yellow]warning:[/yellow] L_pxl acts on SAM2's image embedding, but neither sam2_neck "
                    "nor sam2_image_encoder trains: the contrastive term only moves its projection heads")

    def pretrained(self, ctx: TrainContext) -> bool:
        return True  # foundation-model weights, always

    def parameter_groups(self, ctx: TrainContext, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        return model.parameter_groups()

    def pixel_contrast(self, ctx: TrainContext, model: nn.Module) -> PixelContrast:
        # patch_size None: SAM2's grid and the mask grid both span the whole input frame
        return PixelContrast.from_config(ctx.train.pxl, in_channels=model.feature_channels, patch_size=None)

    def step(self, ctx: TrainContext, *, pxl: PixelContrast | None, weights: ObjectiveWeights,
             total_steps: int) -> StepFn:
        return make_teacher_step(pxl=pxl, weights=weights, total_steps=total_steps,
                                 generator_seed=ctx.config.run.seed)

    def validator(self, ctx: TrainContext) -> EvalFn | None:
        return None

    def save(self, ctx: TrainContext, stage: str, model: nn.Module, steps: int) -> None:
        with atomic_directory(ctx.stage_dir(stage) / self.checkpoint, overwrite=True) as scratch:
            save_grounded_sam2(model, scratch)

    def evaluate(self, ctx: TrainContext, model: nn.Module, path: Path) -> tuple[EvalResult, dict | None]:
        return evaluate_on_val(ctx, model, path), None

    def initial(self, ctx: TrainContext) -> nn.Module:
        return initial_teacher(ctx)

    def zero_shot(self, ctx: TrainContext, model: nn.Module) -> dict[str, Any]:
        path = ctx.stage_dir("teacher_1a") / ZERO_SHOT
        if not path.is_file():
            result = evaluate_on_val(ctx, model, path)
            ctx.log(f"grounded-sam2 zero-shot on val: mask AP {100 * result.ap:.1f}, "
                    f"AP50 {100 * result.ap50:.1f}")
        return zero_shot_fields(path)

    def labeler(self, ctx: TrainContext, checkpoint: Path) -> tuple[Any, dict[str, Any]]:
        return grounded_labeler(ctx, checkpoint)

    def thresholds(self, ctx: TrainContext) -> str:
        return f"train.grounded_sam2.box_threshold {ctx.train.grounded_sam2.box_threshold}"
