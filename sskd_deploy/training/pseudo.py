"""Pseudo-labeling between stages: a finished teacher checkpoint labels the unlabeled set once.

The store is keyed by the teacher's weights, the images' contents and the thresholds, so reruns
reuse it and any change makes a new one. Where the unlabeled images do have ground truth (the
synthetic world keeps it), the pseudo-labels' own mask AP is measured and logged: it is the
quality the student is distilled from.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sskd_deploy.config.teacher import GROUNDED_SAM2
from sskd_deploy.evaluation import evaluate_instances
from sskd_deploy.io import atomic_write_json
from sskd_deploy.models.teacher import MaskFormerTeacher
from sskd_deploy.provenance import hash_file
from sskd_deploy.training.context import TrainContext
from sskd_deploy.training.distributed import barrier
from sskd_deploy.training.pseudo_labels import PseudoLabelConfig, PseudoLabelStore, build_pseudo_labels


def pseudo_label(ctx: TrainContext, teacher_checkpoint: Path) -> PseudoLabelStore:
    """Label ``ctx.data.unlabeled`` with the teacher in ``teacher_checkpoint`` (rank 0 builds, others reuse).

    With ``train.teacher: grounded-sam2`` the checkpoint is a stage's ``weights/`` directory and the
    Grounding DINO + SAM2 labeling rule applies (:mod:`sskd_deploy.training.grounded`).
    """
    from sskd_deploy.training.grounded import grounded_labeler, is_grounded

    if is_grounded(ctx):
        teacher, kwargs = grounded_labeler(ctx, teacher_checkpoint)
    else:
        teacher = MaskFormerTeacher(model=ctx.load(teacher_checkpoint, "teacher").eval(), criterion=ctx.criterion())
        p = ctx.train.pseudo
        cfg = PseudoLabelConfig(
            score_threshold=p.score_threshold, class_threshold=p.class_threshold, mask_threshold=p.mask_threshold,
            min_area=p.min_area, max_instances=p.max_instances, resolve_overlaps=p.resolve_overlaps,
            batch_size=p.batch_size,
        )
        kwargs = {"teacher_hash": hash_file(teacher_checkpoint),
                  "input_size": tuple(ctx.model_config("teacher").input_size), "cfg": cfg}
    kwargs.update(out_root=ctx.root / "pseudo", device=ctx.device)
    # A folder of images has no classes of its own: the pseudo-labels speak the labeled set's classes.
    unlabeled = replace(ctx.data.unlabeled, categories=ctx.data.labeled.categories)
    store = None
    if ctx.is_main:
        store = build_pseudo_labels(teacher, unlabeled, console=ctx.console, **kwargs)
        log_store_quality(ctx, store, teacher_checkpoint)
    barrier()
    if store is None:
        store = build_pseudo_labels(teacher, unlabeled, **kwargs)  # complete now: reused, no inference
    return store


def log_store_quality(ctx: TrainContext, store: PseudoLabelStore, teacher_checkpoint: Path) -> None:
    reused = "reused" if store.reused else "built"
    ctx.log(f"pseudo-labels {reused}: {store.path} ({store.stats.get('instances', '?')} instances on "
            f"{store.stats.get('images', '?')} images, teacher {teacher_checkpoint.parent.name})")
    images = store.stats.get("images", 0)
    if images and store.stats.get("instances", 0) < 0.5 * images:
        p, g = ctx.train.pseudo, ctx.train.grounded_sam2
        rule = (f"train.grounded_sam2.box_threshold {g.box_threshold}" if ctx.train.teacher == GROUNDED_SAM2
                else f"train.pseudo: class {p.class_threshold}, score {p.score_threshold}")
        ctx.log(f"[yellow]warning:[/yellow] only {store.stats.get('instances', 0)} pseudo-instances on {images} "
                f"images: the teacher rarely clears the thresholds ({rule}); the unlabeled "
                "images then mostly teach 'no object'. Train the teacher longer or lower the thresholds.")
    truth = ctx.data.all_labels
    if truth is None:
        return
    ids = {r.image_id for r in store.dataset.records}
    subset = truth.subset([i for i, r in enumerate(truth.records) if r.image_id in ids], name="unlabeled-truth")
    if not subset.records:
        return
    predictions = {r.image_id: r.instances() for r in store.dataset.records}
    result = evaluate_instances(subset, predictions)
    atomic_write_json(store.path / "quality.json", result.to_dict(), indent=2)
    ctx.log(f"pseudo-label quality against the withheld labels: mask AP {100 * result.ap:.1f}, "
            f"AP50 {100 * result.ap50:.1f}")
