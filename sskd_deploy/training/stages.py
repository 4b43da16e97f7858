"""One straight-line recipe per stage (METHOD.md section 3), over the shared helpers.

Each recipe reads like the method: which weights it starts from, which data it sees, which terms
of J are on. ``fit`` runs the shared loop (resumable), then saves the model, evaluates it through
the deploy wrapper on the val split, draws its curves, and marks the stage complete.
"""

from __future__ import annotations

import json
import time

from torch import nn

from sskd_deploy.config.train import StageSchedule
from sskd_deploy.io import atomic_write_json
from sskd_deploy.models.checkpoint import save_checkpoint
from sskd_deploy.models.deploy import DeployWrapper
from sskd_deploy.models.inference import evaluate_wrapper
from sskd_deploy.training.context import TrainContext, mark_complete, read_complete, require_stage
from sskd_deploy.training.contrastive import PixelContrast
from sskd_deploy.training.data import collate_samples
from sskd_deploy.training.grounded import grounded_teacher_1a, grounded_teacher_1b, is_grounded
from sskd_deploy.training.logging import append_final_eval, plot_curves
from sskd_deploy.training.loop import LoopConfig, train_loop
from sskd_deploy.training.objective import ObjectiveWeights, make_step, unwrap
from sskd_deploy.training.pseudo import pseudo_label


def fit(
    ctx: TrainContext, stage: str, model: nn.Module, dataset, schedule: StageSchedule, *,
    role: str, semi: bool, pxl: bool, extra_record: dict | None = None,
) -> dict:
    """Train ``model`` on ``dataset`` with the chosen terms, then save, evaluate and mark complete
    (``extra_record`` joins the completion record)."""
    out, t = ctx.stage_dir(stage), ctx.train
    start = time.perf_counter()
    weights = ObjectiveWeights(
        lambda_semi=t.lambda_semi if semi else 0.0, lambda_pxl=t.lambda_pxl if pxl else 0.0,
        temperature_start=t.pxl.temperature_start, temperature_end=t.pxl.temperature_end,
        temperature_schedule=t.pxl.temperature_schedule,
    )
    contrast = None
    if pxl and t.lambda_pxl > 0:
        contrast = PixelContrast.from_config(t.pxl, in_channels=model.encoder.feature_channels,
                                             patch_size=model.encoder.feature_stride).to(ctx.device)
    groups = model.parameter_groups(decay_embeddings=t.optim.decay_embeddings)
    extra = {}
    if contrast is not None:
        groups["decoder"] = groups["decoder"] + list(contrast.parameters())
        extra["pixel_contrast"] = contrast
    step_fn = make_step(criterion=ctx.criterion(), pxl=contrast, weights=weights, total_steps=schedule.steps,
                        generator_seed=ctx.config.run.seed)
    loop = _loop_config(ctx, schedule, role)
    result = train_loop(
        out_dir=out, model=model, step_fn=step_fn, dataset=dataset, collate=collate_samples, cfg=loop,
        param_groups=groups, extra_modules=extra, console=ctx.console if ctx.is_main else None, device=ctx.device,
        evaluate=lambda net: validation_metrics(ctx, net, role)[0],
    )
    return _finish(ctx, stage, unwrap(model), role, result, time.perf_counter() - start, extra_record or {})


def validation_metrics(ctx: TrainContext, model: nn.Module, role: str):
    """Mask AP (points) through the deploy wrapper on val and, with ``train.eval_train_images``, on
    the first labeled training images: ``({"val_ap", "val_ap50", ["train_ap", "train_ap50"]}, val EvalResult)``."""
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


def _loop_config(ctx: TrainContext, schedule: StageSchedule, role: str) -> LoopConfig:
    o = ctx.train.optim
    return LoopConfig(
        steps=schedule.steps, batch_size=schedule.batch_size, lr=schedule.lr, weight_decay=o.weight_decay,
        backbone_lr_mult=ctx.train.backbone_lr_mult_for(role), warmup_steps=min(o.warmup_steps, schedule.steps - 1),
        poly_power=o.poly_power, grad_clip=o.grad_clip, amp=o.amp, checkpoint_every=o.checkpoint_every,
        log_every=o.log_every, eval_every=ctx.train.eval_every, seed=ctx.config.run.seed,
    )


def _finish(ctx: TrainContext, stage: str, model: nn.Module, role: str, result, seconds: float,
            extra_record: dict) -> dict:
    out = ctx.stage_dir(stage)
    config = ctx.model_config(role)
    record = {"stage": stage, "role": role, "checkpoint": "model.safetensors", "steps": result.steps,
              "train_seconds": round(seconds, 1), "final_losses": result.final_losses, **extra_record}
    if ctx.is_main:
        save_checkpoint(out / "model.safetensors", model=model, config=config, spec=ctx.spec(config),
                        extra={"stage": stage, "steps": result.steps})
        tick = time.perf_counter()
        values, metrics = validation_metrics(ctx, model.eval(), role)
        atomic_write_json(out / "eval.json", metrics.to_dict(), indent=2)
        if (out / "metrics.jsonl").is_file():
            append_final_eval(out / "metrics.jsonl", result.steps, values, time.perf_counter() - tick)
            plot_curves(out / "metrics.jsonl", out / "curves.png")
        record.update(ap=metrics.ap, ap50=metrics.ap50)
        mark_complete(out, record)
        ctx.log(f"[bold]{stage}[/bold]: mask AP {100 * metrics.ap:.1f}, AP50 {100 * metrics.ap50:.1f} "
                f"({seconds:.0f} s)")
    return record


def _pxl_on(ctx: TrainContext) -> bool:
    """Whether the stages with L_pxl really compute it (and so need strong views)."""
    return ctx.train.lambda_pxl > 0


def _done(ctx: TrainContext, stage: str) -> dict | None:
    record = read_complete(ctx.stage_dir(stage))
    if record is not None:
        ctx.log(f"{stage}: complete, skipped (AP {100 * record.get('ap', float('nan')):.1f})")
    return record


def teacher_1a(ctx: TrainContext) -> dict:
    """theta_T0 -> theta_T': L_sup + lambda_pxl L_pxl on the labeled set."""
    if (record := _done(ctx, "teacher_1a")) is not None:
        return record
    if is_grounded(ctx):
        return grounded_teacher_1a(ctx)
    model = ctx.load(ctx.initial_weights("teacher"), "teacher")
    extra = zero_shot_record(ctx, model) if ctx.whole_model("teacher") is not None else {}
    return fit(ctx, "teacher_1a", model, ctx.samples(ctx.data.labeled, 11, strong=_pxl_on(ctx)), ctx.train.teacher_1a,
               role="teacher", semi=False, pxl=True, extra_record=extra)


def zero_shot_record(ctx: TrainContext, model: nn.Module) -> dict:
    """theta_T0, the pretrained teacher sliced to the data's class names, on val before any adaptation:
    the paper's zero-shot row (kept across resumes in ``teacher_1a/zero_shot_eval.json``)."""
    path = ctx.stage_dir("teacher_1a") / "zero_shot_eval.json"
    if ctx.is_main and not path.is_file():
        _, metrics = validation_metrics(ctx, model.eval(), "teacher")
        model.train()
        atomic_write_json(path, {**metrics.to_dict(), "weights": str(ctx.whole_model("teacher")),
                                 "classes": list(ctx.class_names)}, indent=2)
        ctx.log(f"teacher zero-shot by name on val: mask AP {100 * metrics.ap:.1f}, AP50 {100 * metrics.ap50:.1f}")
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {"zero_shot_ap": data.get("ap"), "zero_shot_ap50": data.get("ap50")}


def teacher_1b(ctx: TrainContext) -> dict:
    """theta_T' pseudo-labels D_u; re-initialise from theta_T0; train on D_l + pseudo-labeled D_u with J."""
    if (record := _done(ctx, "teacher_1b")) is not None:
        return record
    if is_grounded(ctx):
        return grounded_teacher_1b(ctx, require_stage(ctx, "teacher_1a", "teacher_1b"))
    store = pseudo_label(ctx, require_stage(ctx, "teacher_1a", "teacher_1b"))
    model = ctx.load(ctx.initial_weights("teacher"), "teacher")
    return fit(ctx, "teacher_1b", model, ctx.paired(store.dataset, 21, strong=_pxl_on(ctx)), ctx.train.teacher_1b,
               role="teacher", semi=True, pxl=True)


def student_2(ctx: TrainContext) -> dict:
    """Frozen theta_T'' pseudo-labels D_u offline; the student trains from theta_S0 with the full J."""
    if (record := _done(ctx, "student_2")) is not None:
        return record
    store = pseudo_label(ctx, require_stage(ctx, "teacher_1b", "student_2"))
    model = ctx.load(ctx.initial_weights("student"), "student")
    return fit(ctx, "student_2", model, ctx.paired(store.dataset, 31, strong=_pxl_on(ctx)), ctx.train.student_2,
               role="student", semi=True, pxl=True)


def student_3(ctx: TrainContext) -> dict:
    """Continue from the stage-2 student with L_sup on the labeled set only."""
    if (record := _done(ctx, "student_3")) is not None:
        return record
    model = ctx.load(require_stage(ctx, "student_2", "student_3"), "student")
    return fit(ctx, "student_3", model, ctx.samples(ctx.data.labeled, 41, strong=False), ctx.train.student_3,
               role="student", semi=False, pxl=False)


def supervised(ctx: TrainContext) -> dict:
    """The baseline: the student from theta_S0 on the labeled set only, L_sup, stage 2 + 3's length."""
    if (record := _done(ctx, "supervised")) is not None:
        return record
    model = ctx.load(ctx.initial_weights("student"), "student")
    return fit(ctx, "supervised", model, ctx.samples(ctx.data.labeled, 51, strong=False),
               ctx.train.supervised_schedule(),
               role="student", semi=False, pxl=False)


RECIPES = {"teacher_1a": teacher_1a, "teacher_1b": teacher_1b, "student_2": student_2, "student_3": student_3,
           "supervised": supervised}

