"""One straight-line recipe per stage (METHOD.md section 3), over the shared helpers.

Each recipe reads like the method: which weights it starts from, which data it sees, which terms
of J are on. The teacher is the one :func:`~sskd_deploy.training.teachers.make_teacher` picks from
``train.teacher``; the student is a :class:`~sskd_deploy.training.teachers.MaskFormerTrainee`.
``fit`` runs the shared loop (resumable) for either, then saves the model, evaluates it on the val
split, draws its curves, and marks the stage complete.
"""

from __future__ import annotations

import time
import zlib

import torch
from torch import nn

from sskd_deploy.config.layout import CURVES, EVAL, METRICS
from sskd_deploy.config.train import StageSchedule
from sskd_deploy.errors import SSKDError
from sskd_deploy.training.context import TrainContext, mark_complete, read_complete, require_stage
from sskd_deploy.training.contrastive import PixelContrast
from sskd_deploy.training.data import collate_samples
from sskd_deploy.training.logging import append_final_eval, plot_curves
from sskd_deploy.training.loop import LoopConfig, train_loop
from sskd_deploy.training.objective import ObjectiveWeights, unwrap
from sskd_deploy.training.pseudo import TRUTH, stage_pseudo_labels
from sskd_deploy.training.teachers import MaskFormerTrainee, StageTeacher, Trainee, make_teacher

STUDENT = MaskFormerTrainee("student")


def fit(
    ctx: TrainContext, stage: str, trainee: Trainee, model: nn.Module, dataset, schedule: StageSchedule, *,
    semi: bool, pxl: bool, extra_record: dict | None = None,
) -> dict:
    """Train ``model`` (of the kind ``trainee`` describes) on ``dataset`` with the chosen terms, then save,
    evaluate and mark complete (``extra_record`` joins the completion record)."""
    trainee.check(ctx, stage, model)
    out, t = ctx.stage_dir(stage), ctx.train
    start = time.perf_counter()
    weights = ObjectiveWeights(
        lambda_semi=t.lambda_semi if semi else 0.0, lambda_pxl=t.lambda_pxl if pxl else 0.0,
        temperature_start=t.pxl.temperature_start, temperature_end=t.pxl.temperature_end,
        temperature_schedule=t.pxl.temperature_schedule,
    )
    contrast = build_contrast(ctx, stage, trainee, model) if pxl and t.lambda_pxl > 0 else None
    groups = trainee.parameter_groups(ctx, model)
    extra = {}
    if contrast is not None:
        groups["decoder"] = groups["decoder"] + list(contrast.parameters())
        extra["pixel_contrast"] = contrast
    step_fn = trainee.step(ctx, pxl=contrast, weights=weights, total_steps=schedule.steps)
    validate = trainee.validator(ctx)
    loop = _loop_config(ctx, schedule, backbone_lr_mult=t.encoder_lr_mult(pretrained=trainee.pretrained(ctx)),
                        eval_every=t.eval_every if validate is not None else 0)
    result = train_loop(
        out_dir=out, model=model, step_fn=step_fn, dataset=dataset, collate=collate_samples, cfg=loop,
        param_groups=groups, extra_modules=extra, console=ctx.console if ctx.is_main else None, device=ctx.device,
        evaluate=validate,
    )
    seconds = time.perf_counter() - start
    return _finish(ctx, stage, trainee, unwrap(model), result, seconds, extra_record or {})


def build_contrast(ctx: TrainContext, stage: str, trainee: Trainee, model: nn.Module) -> PixelContrast:
    """The stage's L_pxl projection heads, initialised from the run seed and the stage name alone.

    Built from a private copy of the random state, so the head is the same in a fresh run, a rerun
    and every DDP rank, whatever ran before in the process, and the global stream is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.config.run.seed * 1009 + zlib.crc32(stage.encode()) % 1009)
        contrast = trainee.pixel_contrast(ctx, model)
    return contrast.to(ctx.device)


def _loop_config(ctx: TrainContext, schedule: StageSchedule, *, backbone_lr_mult: float,
                 eval_every: int) -> LoopConfig:
    o = ctx.train.optim
    return LoopConfig(
        steps=schedule.steps, batch_size=schedule.batch_size, lr=schedule.lr, weight_decay=o.weight_decay,
        backbone_lr_mult=backbone_lr_mult, warmup_steps=min(o.warmup_steps, schedule.steps - 1),
        poly_power=o.poly_power, grad_clip=o.grad_clip, amp=o.amp, checkpoint_every=o.checkpoint_every,
        log_every=o.log_every, eval_every=eval_every, seed=ctx.config.run.seed,
    )


def _finish(ctx: TrainContext, stage: str, trainee: Trainee, model: nn.Module, result, seconds: float,
            extra_record: dict) -> dict:
    out = ctx.stage_dir(stage)
    record = {"stage": stage, "role": trainee.role, **trainee.record, "checkpoint": trainee.checkpoint,
              "steps": result.steps, "train_seconds": round(seconds, 1), "final_losses": result.final_losses,
              **extra_record}
    if ctx.is_main:
        trainee.save(ctx, stage, model, result.steps)
        tick = time.perf_counter()
        metrics, values = trainee.evaluate(ctx, model, out / EVAL)
        if (out / METRICS).is_file():
            if values is not None:
                append_final_eval(out / METRICS, result.steps, values, time.perf_counter() - tick)
            plot_curves(out / METRICS, out / CURVES)
        record.update(ap=metrics.ap, ap50=metrics.ap50)
        mark_complete(out, record)
        ctx.log(f"[bold]{stage}[/bold]{trainee.tag}: mask AP {100 * metrics.ap:.1f}, "
                f"AP50 {100 * metrics.ap50:.1f} ({seconds:.0f} s)")
    return record


def _teacher(ctx: TrainContext) -> StageTeacher:
    return make_teacher(ctx.train.teacher)


def _pxl_on(ctx: TrainContext) -> bool:
    """Whether the stages with L_pxl really compute it (and so need strong views)."""
    return ctx.train.lambda_pxl > 0


def _pseudo_mark(source: str | None) -> dict:
    """The record entry of a stage that trained (or built on one that trained) on the withheld truth
    instead of pseudo-labels; tables label it. ``source``: a store's key or an earlier stage's mark."""
    return {"pseudo_labels": TRUTH} if source == TRUTH else {}


# the stages whose weights depend on what the unlabeled images were labeled with (stage 3 through stage 2)
_PSEUDO_FED = frozenset({"teacher_1b", "student_2", "student_3"})


def _check_pseudo_source(ctx: TrainContext, stage: str, record: dict) -> None:
    """A finished stage trained on the other pseudo-label source is never reused (or built on) silently."""
    was = record.get("pseudo_labels", "teacher")
    if stage in _PSEUDO_FED and was != ctx.train.pseudo.source:
        raise SSKDError(f"{ctx.stage_dir(stage)} was trained with train.pseudo.source: {was}, but this run "
                        f"sets {ctx.train.pseudo.source}: use another run.out_dir, or delete that stage's "
                        "directory to retrain it")


def _done(ctx: TrainContext, stage: str) -> dict | None:
    record = read_complete(ctx.stage_dir(stage))
    if record is not None:
        _check_pseudo_source(ctx, stage, record)
        ctx.log(f"{stage}: complete, skipped (AP {100 * record.get('ap', float('nan')):.1f})")
    return record


def teacher_1a(ctx: TrainContext) -> dict:
    """theta_T0 -> theta_T': L_sup + lambda_pxl L_pxl on the labeled set."""
    if (record := _done(ctx, "teacher_1a")) is not None:
        return record
    teacher = _teacher(ctx)
    model = teacher.initial(ctx)
    extra = teacher.zero_shot(ctx, model)
    return fit(ctx, "teacher_1a", teacher, model, ctx.samples(ctx.data.labeled, 11, strong=_pxl_on(ctx)),
               ctx.train.teacher_1a, semi=False, pxl=True, extra_record=extra)


def teacher_1b(ctx: TrainContext) -> dict:
    """theta_T' pseudo-labels D_u; re-initialise from theta_T0; train on D_l + pseudo-labeled D_u with J."""
    if (record := _done(ctx, "teacher_1b")) is not None:
        return record
    teacher = _teacher(ctx)
    store = stage_pseudo_labels(ctx, teacher, "teacher_1a", "teacher_1b")
    model = teacher.initial(ctx)
    return fit(ctx, "teacher_1b", teacher, model, ctx.paired(store.dataset, 21, strong=_pxl_on(ctx)),
               ctx.train.teacher_1b, semi=True, pxl=True, extra_record=_pseudo_mark(store.key))


def student_2(ctx: TrainContext) -> dict:
    """Frozen theta_T'' pseudo-labels D_u offline; the student trains from theta_S0 with the full J."""
    if (record := _done(ctx, "student_2")) is not None:
        return record
    store = stage_pseudo_labels(ctx, _teacher(ctx), "teacher_1b", "student_2")
    model = ctx.load(ctx.initial_weights("student"), "student")
    return fit(ctx, "student_2", STUDENT, model, ctx.paired(store.dataset, 31, strong=_pxl_on(ctx)),
               ctx.train.student_2, semi=True, pxl=True, extra_record=_pseudo_mark(store.key))


def student_3(ctx: TrainContext) -> dict:
    """Continue from the stage-2 student with L_sup on the labeled set only."""
    if (record := _done(ctx, "student_3")) is not None:
        return record
    model = ctx.load(require_stage(ctx, "student_2", "student_3"), "student")
    before = read_complete(ctx.stage_dir("student_2"))
    _check_pseudo_source(ctx, "student_2", before)
    return fit(ctx, "student_3", STUDENT, model, ctx.samples(ctx.data.labeled, 41, strong=False),
               ctx.train.student_3, semi=False, pxl=False, extra_record=_pseudo_mark(before.get("pseudo_labels")))


def supervised(ctx: TrainContext) -> dict:
    """The baseline: the student from theta_S0 on the labeled set only, L_sup, stage 2 + 3's length
    (theta_S0 first scored zero-shot when it is a whole pretrained student)."""
    if (record := _done(ctx, "supervised")) is not None:
        return record
    model = ctx.load(ctx.initial_weights("student"), "student")
    extra = STUDENT.zero_shot_in(ctx, model, "supervised")  # a whole pretrained student's starting point
    return fit(ctx, "supervised", STUDENT, model, ctx.samples(ctx.data.labeled, 51, strong=False),
               ctx.train.supervised_schedule(), semi=False, pxl=False, extra_record=extra)


RECIPES = {"teacher_1a": teacher_1a, "teacher_1b": teacher_1b, "student_2": student_2, "student_3": student_3,
           "supervised": supervised}

