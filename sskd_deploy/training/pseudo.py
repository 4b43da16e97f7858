"""Pseudo-labeling between stages: a finished teacher checkpoint labels the unlabeled set once.

The store is keyed by the teacher's weights, the images' contents and the thresholds, so reruns
reuse it and any change makes a new one. Where the unlabeled images do have ground truth (the
synthetic world keeps it), the pseudo-labels' own mask AP is measured and logged: it is the
quality the student is distilled from.

``train.pseudo.source: truth`` swaps the teacher for those withheld labels (a diagnostic): the same
stages then show what a perfect teacher would give at the run's budget, the method's ceiling.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sskd_deploy.data.coco import write_coco
from sskd_deploy.errors import ConfigError
from sskd_deploy.evaluation import evaluate_instances
from sskd_deploy.io import atomic_directory, atomic_write_json
from sskd_deploy.training.context import TrainContext, require_stage
from sskd_deploy.training.distributed import barrier
from sskd_deploy.training.pseudo_labels import (
    LABELS_FILE,
    MANIFEST_FILE,
    PseudoLabelStore,
    build_pseudo_labels,
    pseudo_dataset,
    store_stats,
)
from sskd_deploy.training.teachers import StageTeacher

TRUTH = "truth"


def stage_pseudo_labels(ctx: TrainContext, teacher: StageTeacher, teacher_stage: str, needed_by: str
                        ) -> PseudoLabelStore:
    """The pseudo-labeled unlabeled set stage ``needed_by`` trains on: the labels of the finished
    ``teacher_stage`` teacher, or the withheld ground truth with ``train.pseudo.source: truth``."""
    if ctx.train.pseudo.source == TRUTH:
        return truth_labels(ctx, needed_by)
    return pseudo_label(ctx, teacher, require_stage(ctx, teacher_stage, needed_by))


def truth_labels(ctx: TrainContext, needed_by: str) -> PseudoLabelStore:
    """The unlabeled images with their withheld ground truth as pseudo-labels (score 1), written on rank 0
    under ``pseudo/truth/`` in the store's format, with its ``quality.json`` (a ceiling check: mask AP 1)."""
    unlabeled, truth = ctx.data.unlabeled, ctx.data.all_labels
    if truth is None:
        raise ConfigError(None, [f"train.pseudo.source: truth (stage {needed_by}) needs the unlabeled images' own "
                                 "labels, which only the synthetic world keeps; this run's unlabeled set "
                                 f"({unlabeled.source}) has none: set train.pseudo.source: teacher"])
    by_id = {r.image_id: r for r in truth.records}
    lost = [r.file_name for r in unlabeled.records if r.image_id not in by_id]
    if lost:
        raise ConfigError(None, [f"train.pseudo.source: truth: {len(lost)} unlabeled image(s) have no record in "
                                 f"the withheld labels ({truth.source}), e.g. {lost[0]}"])
    records = tuple(replace(r, annotations=by_id[r.image_id].annotations or ()) for r in unlabeled.records)
    path = ctx.layout.pseudo_dir / TRUTH
    dataset = replace(pseudo_dataset(replace(unlabeled, categories=ctx.data.labeled.categories), records, path),
                      name=f"{unlabeled.name}-truth")
    store = PseudoLabelStore(path, TRUTH, False, dataset, store_stats(dataset))
    if ctx.is_main:
        with atomic_directory(path, overwrite=True) as scratch:
            write_coco(dataset, scratch / LABELS_FILE)
            atomic_write_json(scratch / MANIFEST_FILE, {"key": TRUTH, "source": "withheld ground truth",
                                                        "stats": store.stats}, indent=2)
        ctx.log(f"[yellow]stage {needed_by} trains on the withheld ground truth of {len(records)} unlabeled "
                "images (train.pseudo.source: truth): a diagnostic ceiling, not the method[/yellow]")
        measure_quality(ctx, store)
    barrier()
    return store


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
    measure_quality(ctx, store)


def measure_quality(ctx: TrainContext, store: PseudoLabelStore) -> None:
    """Score a store against the unlabeled images' withheld labels, where the data keeps them
    (``quality.json`` beside the store, and one log line)."""
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
