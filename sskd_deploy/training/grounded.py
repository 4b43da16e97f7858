"""Stage 1 with the Grounded-SAM2 foundation-model teacher (``train.teacher: grounded-sam2``).

The same recipe as the same-family teacher (METHOD.md section 3), with this teacher's parts:

- 1a: from the pretrained weights theta_T0 (``train.grounded_sam2.weights``), train the configured
  parts on D_l with L_sup (Grounding DINO's box loss + SAM2's mask loss) + lambda_pxl L_pxl, where
  L_pxl acts on SAM2's stride-16 image embedding and draws negatives with the same fused sampler
  from the teacher's own detached predictions (its best boxes' class scores and SAM2 masks).
  Before training, theta_T0 is evaluated zero-shot on the val split: the paper's "zero-shot VFM" row.
- 1b: the 1a teacher pseudo-labels D_u into the shared store; re-initialise from theta_T0; train
  on D_l + pseudo-labeled D_u with L_sup + lambda_semi L_semi + lambda_pxl L_pxl.

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

from sskd_deploy.config.train import StageSchedule
from sskd_deploy.data.coco import load_json_object
from sskd_deploy.data.records import Dataset
from sskd_deploy.errors import SSKDError
from sskd_deploy.evaluation import EvalResult, evaluate_instances
from sskd_deploy.io import atomic_directory, atomic_write_json
from sskd_deploy.models.grounded_sam2 import (
    GroundedSam2Teacher,
    load_grounded_sam2,
    save_grounded_sam2,
    state_hash,
)
from sskd_deploy.structures import Instances
from sskd_deploy.training.context import TrainContext, mark_complete
from sskd_deploy.training.contrastive import PixelContrast, temperature_at
from sskd_deploy.training.data import collate_samples
from sskd_deploy.training.logging import plot_curves
from sskd_deploy.training.loop import LoopConfig, train_loop
from sskd_deploy.training.objective import ObjectiveWeights, add_pixel_term, unwrap
from sskd_deploy.training.pseudo import pseudo_label
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


# -- stage recipes ------------------------------------------------------------------------------

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


def _evaluate_into(ctx: TrainContext, teacher: GroundedSam2Teacher, path: Path) -> EvalResult:
    teacher.eval()
    result, _, seconds = evaluate_teacher(teacher, ctx.data.val, input_size=teacher_input_size(ctx, teacher),
                                          batch_size=ctx.train.eval_batch_size, device=ctx.device)
    atomic_write_json(path, {**result.to_dict(), "labeling_seconds": round(seconds, 3)}, indent=2)
    return result


def fit_teacher(ctx: TrainContext, stage: str, teacher: GroundedSam2Teacher, dataset, schedule: StageSchedule, *,
                semi: bool, extra_record: dict | None = None) -> dict:
    """Train the teacher's configured parts with J, then save ``weights/``, evaluate and mark complete."""
    if ctx.world_size > 1:
        raise SSKDError("the Grounded-SAM2 teacher adapts in a single process; run stage 1 without torchrun")
    t, g = ctx.train, ctx.train.grounded_sam2
    out = ctx.stage_dir(stage)
    start = time.perf_counter()
    if not any(p.requires_grad for p in teacher.parameters()):
        raise SSKDError(f"train.grounded_sam2.trainable is empty: stage {stage} would train nothing")
    if t.lambda_pxl > 0 and not ({"sam2_neck", "sam2_image_encoder"} & set(g.trainable)):
        ctx.log("[yellow]warning:[/yellow] L_pxl acts on SAM2's image embedding, but neither sam2_neck nor "
                "sam2_image_encoder trains: the contrastive term only moves its projection heads")
    weights = ObjectiveWeights(
        lambda_semi=t.lambda_semi if semi else 0.0, lambda_pxl=t.lambda_pxl,
        temperature_start=t.pxl.temperature_start, temperature_end=t.pxl.temperature_end,
        temperature_schedule=t.pxl.temperature_schedule,
    )
    contrast = None
    if t.lambda_pxl > 0:
        # patch_size None: SAM2's grid and the mask grid both span the whole input frame
        contrast = PixelContrast.from_config(t.pxl, in_channels=teacher.feature_channels,
                                             patch_size=None).to(ctx.device)
    groups = teacher.parameter_groups()
    extra = {}
    if contrast is not None:
        groups["decoder"] = groups["decoder"] + list(contrast.parameters())
        extra["pixel_contrast"] = contrast
    o = t.optim
    loop = LoopConfig(
        steps=schedule.steps, batch_size=schedule.batch_size, lr=schedule.lr, weight_decay=o.weight_decay,
        # pretrained foundation-model weights: backbones at lr x 0.1 unless configured
        backbone_lr_mult=0.1 if o.backbone_lr_mult is None else o.backbone_lr_mult,
        warmup_steps=min(o.warmup_steps, schedule.steps - 1), poly_power=o.poly_power, grad_clip=o.grad_clip,
        amp=o.amp, checkpoint_every=o.checkpoint_every, log_every=o.log_every, seed=ctx.config.run.seed,
    )
    step_fn = make_teacher_step(pxl=contrast, weights=weights, total_steps=schedule.steps,
                                generator_seed=ctx.config.run.seed)
    result = train_loop(out_dir=out, model=teacher, step_fn=step_fn, dataset=dataset, collate=collate_samples,
                        cfg=loop, param_groups=groups, extra_modules=extra,
                        console=ctx.console if ctx.is_main else None, device=ctx.device)
    seconds = time.perf_counter() - start
    with atomic_directory(out / WEIGHTS, overwrite=True) as scratch:
        save_grounded_sam2(teacher, scratch)
    metrics = _evaluate_into(ctx, teacher, out / "eval.json")
    if (out / "metrics.jsonl").is_file():
        plot_curves(out / "metrics.jsonl", out / "curves.png")
    record = {"stage": stage, "role": "teacher", "teacher": "grounded-sam2", "checkpoint": WEIGHTS,
              "steps": result.steps, "train_seconds": round(seconds, 1), "final_losses": result.final_losses,
              "ap": metrics.ap, "ap50": metrics.ap50, **(extra_record or {})}
    mark_complete(out, record)
    ctx.log(f"[bold]{stage}[/bold] (grounded-sam2): mask AP {100 * metrics.ap:.1f}, AP50 {100 * metrics.ap50:.1f} "
            f"({seconds:.0f} s)")
    return record


def zero_shot_record(ctx: TrainContext, teacher: GroundedSam2Teacher) -> dict:
    """theta_T0 on the val split, before any adaptation (kept across resumes in ``zero_shot_eval.json``)."""
    path = ctx.stage_dir("teacher_1a") / "zero_shot_eval.json"
    if not path.is_file():
        result = _evaluate_into(ctx, teacher, path)
        ctx.log(f"grounded-sam2 zero-shot on val: mask AP {100 * result.ap:.1f}, AP50 {100 * result.ap50:.1f}")
    data = load_json_object(path)
    return {"zero_shot_ap": data.get("ap"), "zero_shot_ap50": data.get("ap50")}


def grounded_teacher_1a(ctx: TrainContext) -> dict:
    """theta_T0 -> theta_T': L_sup + lambda_pxl L_pxl on the labeled set."""
    teacher = initial_teacher(ctx)
    extra = zero_shot_record(ctx, teacher)
    return fit_teacher(ctx, "teacher_1a", teacher, ctx.samples(ctx.data.labeled, 11), ctx.train.teacher_1a,
                       semi=False, extra_record=extra)


def grounded_teacher_1b(ctx: TrainContext, teacher_1a_weights: Path) -> dict:
    """theta_T' pseudo-labels D_u; re-initialise from theta_T0; D_l + pseudo-labeled D_u with J."""
    store = pseudo_label(ctx, teacher_1a_weights)
    teacher = initial_teacher(ctx)
    return fit_teacher(ctx, "teacher_1b", teacher, ctx.paired(store.dataset, 21), ctx.train.teacher_1b, semi=True)


def is_grounded(ctx: TrainContext) -> bool:
    from sskd_deploy.config.teacher import GROUNDED_SAM2

    return ctx.train.teacher == GROUNDED_SAM2

