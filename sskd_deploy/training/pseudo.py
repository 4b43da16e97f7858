"""Pseudo-labeling between stages: a finished teacher checkpoint labels the unlabeled set once.

The store is keyed by the teacher's weights, the images' contents and the thresholds, so reruns
reuse it and any change makes a new one. Where the unlabeled images do have ground truth (the
synthetic world keeps it), the pseudo-labels' own mask AP is measured and logged: it is the
quality the student is distilled from.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sskd_deploy.evaluation import evaluate_instances
from sskd_deploy.io import atomic_write_json
from sskd_deploy.training.context import TrainContext
from sskd_deploy.training.distributed import barrier
from sskd_deploy.training.pseudo_labels import PseudoLabelStore, build_pseudo_labels
from sskd_deploy.training.teachers import StageTeacher


def pseudo_label(ctx: TrainContext, teacher: StageTeacher, teacher_checkpoint: Path) -> PseudoLabelStore:
    """Label ``ctx.data.unlabeled`` with the teacher in ``teacher_checkpoint`` (rank 0 builds, others reuse).

    ``teacher`` (:func:`~sskd_deploy.training.teachers.make_teacher`) loads the checkpoint (a stage's
    ``model.safetensors``, or its ``weights/`` directory for Grounded-SAM2) and brings its labeling rule.
    """
    labeler, kwargs = teacher.labeler(ctx, teacher_checkpoint)
    kwargs.update(out_root=ctx.layout.pseudo_dir, device=ctx.device)
    # A folder of images has no classes of its own: the pseudo-labels speak the labeled set's classes.
    unlabeled = replace(ctx.data.unlabeled, categories=ctx.data.labeled.categories)
    store = None
    if ctx.is_main:
        store = build_pseudo_labels(labeler, unlabeled, console=ctx.console, **kwargs)
        log_store_quality(ctx, store, teacher_checkpoint, teacher)
    barrier()
    if store is None:
        store = build_pseudo_labels(labeler, unlabeled, **kwargs)  # complete now: reused, no inference
    return store


def log_store_quality(ctx: TrainContext, store: PseudoLabelStore, teacher_checkpoint: Path,
                      teacher: StageTeacher) -> None:
    reused = "reused" if store.reused else "built"
    ctx.log(f"pseudo-labels {reused}: {store.path} ({store.stats.get('instances', '?')} instances on "
            f"{store.stats.get('images', '?')} images, teacher {teacher_checkpoint.parent.name})")
    images = store.stats.get("images", 0)
    if images and store.stats.get("instances", 0) < 0.5 * images:
        rule = teacher.thresholds(ctx)
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
