"""The Grounded-SAM2 foundation-model teacher's training pieces (``train.teacher: grounded-sam2``).

Stage 1 runs the same recipes as with the same-family teacher (METHOD.md section 3); this module
holds what differs, and :class:`~sskd_deploy.training.teachers.GroundedSam2StageTeacher` hands it
to them:

- 1a: from the pretrained weights theta_T0 (``train.grounded_sam2.weights``), train the configured
  parts on D_l with L_sup (Grounding DINO's box loss + SAM2's mask loss) + lambda_pxl L_pxl, where
  L_pxl acts on SAM2's stride-16 image embedding and draws negatives with the same fused sampler
  from the teacher's own detached predictions (its best boxes' class scores and SAM2 masks)
  (:func:`make_teacher_step`). Before training, theta_T0 is evaluated zero-shot on the val split:
  the paper's "zero-shot VFM" row.
- 1b: the 1a teacher pseudo-labels D_u into the shared store (:func:`grounded_labeler`);
  re-initialise from theta_T0; train on D_l + pseudo-labeled D_u with L_sup + lambda_semi L_semi +
  lambda_pxl L_pxl.

Each stage directory holds ``weights/`` (the adapted teacher as a Grounded-SAM2 weights directory,
usable with ``--weights``), ``eval.json`` and the usual training state, curves and ``complete.json``.
Stage 2 then distils from the 1b teacher's pseudo-labels exactly as with any other teacher.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sskd_deploy.data.records import Dataset
from sskd_deploy.errors import SSKDError
from sskd_deploy.evaluation import EvalResult, evaluate_instances
from sskd_deploy.io import atomic_write_json
from sskd_deploy.models.grounded_sam2 import GroundedSam2Teacher, load_grounded_sam2, state_hash
from sskd_deploy.structures import Instances
from sskd_deploy.training.context import TrainContext
from sskd_deploy.training.contrastive import PixelContrast, temperature_at
from sskd_deploy.training.objective import ObjectiveWeights, add_pixel_term, unwrap
from sskd_deploy.training.pseudo_labels import (
    PseudoLabelConfig,
    label_records,
)

WEIGHTS = "weights"


def labeling_config(teacher: GroundedSam2Teacher, batch_size: int | None = None) -> PseudoLabelConfig:
    rule = teacher.labeling_rule()
    if batch_size is not None:
        rule["batch_size"] = batch_size
    return PseudoLabelConfig(**rule)


def teacher_input_size(ctx: TrainContext, teacher: GroundedSam2Teacher) -> tuple[int, int]:
    """Grounding DINO's input frame: ``grounded_sam2.input_size``, else the run's input size."""
    if teacher.cfg.input_size is not None:
        return tuple(teacher.cfg.input_size)
    return tuple(ctx.model_config("student").input_size)


def evaluate_teacher(
    teacher: GroundedSam2Teacher, dataset: Dataset, *, input_size: tuple[int, int], batch_size: int | None = None,
    device: str | torch.device = "cpu", progress: Callable[[int, int], None] | None = None,
) -> tuple[EvalResult, dict[int, Instances], float]:
    """Mask AP of the teacher's hard labels (box threshold, SAM2 masks, overlaps resolved) on a labeled split.

    Returns the metrics, the predictions by image id, and the labeling wall time in seconds.
    """
    labeled = [r for r in dataset.records if r.labeled]
    if not labeled:
        raise SSKDError(f"{dataset.source}: no labeled images to evaluate the teacher on")
    start = time.perf_counter()
    records = label_records(teacher, labeled, input_size=input_size, cfg=labeling_config(teacher, batch_size),
                            device=device, progress=progress)
    seconds = time.perf_counter() - start
    predictions = {r.image_id: r.instances() for r in records}
    return evaluate_instances(dataset, predictions), predictions, seconds


def ids_on_cells(instance_ids: Tensor, grid: tuple[int, int]) -> Tensor:
    """Instance id at the centre of each cell of a ``grid`` spanning the whole frame: ``(B, H, W) -> (B, h, w)``."""
    height, width = instance_ids.shape[-2:]
    ys = ((torch.arange(grid[0]) + 0.5) * height / grid[0]).long().clamp(max=height - 1)
    xs = ((torch.arange(grid[1]) + 0.5) * width / grid[1]).long().clamp(max=width - 1)
    return instance_ids[:, ys.to(instance_ids.device)][:, :, xs.to(instance_ids.device)]


def make_teacher_step(
    *, pxl: PixelContrast | None, weights: ObjectiveWeights, total_steps: int, generator_seed: int = 0,
) -> Callable[[nn.Module, dict, int], dict[str, Tensor]]:
    """``step_fn`` of J for the Grounded-SAM2 teacher (see :func:`sskd_deploy.training.objective.make_step`).

    Labeled and pseudo-labeled images go through the teacher separately (their losses are
    weighted apart); L_pxl takes both halves' SAM2 embeddings and predictions together.
    """

    def step_fn(model: nn.Module, batch: dict, step: int) -> dict[str, Tensor]:
        parts = [batch["l"], batch["u"]] if "l" in batch else [batch]
        net: GroundedSam2Teacher = unwrap(model)
        generator = torch.Generator().manual_seed(generator_seed * 1_000_003 + step)
        use_pxl = pxl is not None and weights.lambda_pxl > 0
        outs = [net.forward_train(p["weak"], p["targets"], generator=generator, queries=use_pxl) for p in parts]
        terms = {"sup": outs[0]["loss"], "sup_box": outs[0]["box"],
                 "sup_mask": outs[0]["mask_bce"] + outs[0]["mask_dice"]}
        loss = terms["sup"]
        if len(parts) == 2 and weights.lambda_semi > 0:
            terms["semi"] = outs[1]["loss"]
            loss = loss + weights.lambda_semi * terms["semi"]
        if use_pxl:
            feat_weak = torch.cat([o["features"] for o in outs])
            with torch.no_grad():  # the strong view is a fixed target
                feat_strong = net.dense_features(torch.cat([p["strong"] for p in parts]))
            ids = ids_on_cells(torch.cat([p["instance_ids"] for p in parts]), tuple(feat_weak.shape[-2:]))
            temperature = temperature_at(step, total_steps, start=weights.temperature_start,
                                         end=weights.temperature_end, schedule=weights.temperature_schedule)
            loss_pxl, diagnostics = pxl(
                feat_weak, feat_strong, torch.cat([o["pred_logits"] for o in outs]),
                torch.cat([o["pred_masks"] for o in outs]), temperature=temperature, instance_ids=ids,
                generator=generator,
            )
            loss = add_pixel_term(terms, loss, loss_pxl, diagnostics, weights)
        terms["loss"] = loss
        return terms

    return step_fn


# -- theta_T0, the adapted teachers, labeling and evaluation -----------------------------------------

def initial_teacher(ctx: TrainContext) -> GroundedSam2Teacher:
    """theta_T0: the configured pretrained weights."""
    g = ctx.train.grounded_sam2
    return load_grounded_sam2(g.weights, cfg=g, class_names=ctx.class_names).to(ctx.device)


def stage_teacher(ctx: TrainContext, weights_dir: Path) -> GroundedSam2Teacher:
    """An adapted teacher a stage wrote (never downloads)."""
    return load_grounded_sam2(weights_dir, cfg=ctx.train.grounded_sam2, class_names=ctx.class_names,
                              allow_download=False).to(ctx.device)


def grounded_labeler(ctx: TrainContext, weights_dir: Path) -> tuple[GroundedSam2Teacher, dict[str, Any]]:
    """The Grounded-SAM2 teacher in ``weights_dir`` and its pseudo-label store settings (key, size, rule)."""
    teacher = stage_teacher(ctx, weights_dir).eval()
    return teacher, {"teacher_hash": teacher_identity(teacher), "input_size": teacher_input_size(ctx, teacher),
                     "cfg": labeling_config(teacher)}


def teacher_identity(teacher: GroundedSam2Teacher) -> str:
    """What makes two Grounded-SAM2 labelings the same: the weights and the prompt (thresholds are in the rule)."""
    return f"grounded-sam2:{state_hash(teacher)}:{teacher.prompt}"


def evaluate_on_val(ctx: TrainContext, teacher: GroundedSam2Teacher, path: Path) -> EvalResult:
    """Mask AP of ``teacher``'s hard labels on the val split, written to ``path`` with the labeling time."""
    teacher.eval()
    result, _, seconds = evaluate_teacher(teacher, ctx.data.val, input_size=teacher_input_size(ctx, teacher),
                                          batch_size=ctx.train.eval_batch_size, device=ctx.device)
    atomic_write_json(path, {**result.to_dict(), "labeling_seconds": round(seconds, 3)}, indent=2)
    return result
