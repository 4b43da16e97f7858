"""The pseudo-label store: a teacher labels the unlabeled images once, the result is kept and reused.

Each query of the teacher becomes at most one instance: its best real class, a score of class
probability x mean mask probability inside its binary mask (the deploy score), Guided-Distillation
style thresholds, masks upsampled to the original image by :mod:`sskd_deploy.evaluation.postprocess`, overlaps
resolved so each pixel belongs to one instance (as the Grounding DINO + SAM2 teacher does), tiny
masks dropped. The store lives in ``out_root/<key>/`` where the key hashes the teacher's weights,
every image's name and bytes, and the thresholds: a rerun with the same inputs reuses it, any change
builds a new one. The directory appears only when complete (:func:`sskd_deploy.io.atomic_directory`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sskd_deploy.data.coco import load_json_object, write_coco
from sskd_deploy.data.image_io import read_image
from sskd_deploy.data.records import Annotation, CategorySet, Dataset, ImageRecord
from sskd_deploy.errors import DatasetError
from sskd_deploy.io import atomic_directory, atomic_write_json
from sskd_deploy.models.teacher import Teacher
from sskd_deploy.evaluation.postprocess import postprocess
from sskd_deploy.preprocess import PreprocessInfo, preprocess_batch
from sskd_deploy.provenance import hash_file
from sskd_deploy.structures import Instances, compress_rle, masks_to_rles

# Bump when the labeling rule changes, so stores made by older code are never reused.
STORE_FORMAT = 1
LABELS_FILE = "pseudo_labels.json"
MANIFEST_FILE = "manifest.json"
# Probabilities are clipped this far from 0 and 1 before taking logits: sigmoid saturates to exactly
# 1.0 in float32, and a threshold of 0 or 1 would otherwise become an infinite logit.
_EPS = 1e-6


@dataclass(frozen=True)
class PseudoLabelConfig:
    """Which teacher queries become pseudo-labels (defaults follow Guided Distillation).

    Attributes:
        score_threshold: keep a query when class prob x mean mask prob ``> score_threshold``.
        class_threshold: keep a query when its best real class prob ``> class_threshold``.
        mask_threshold: a pixel belongs to a mask where its probability ``> mask_threshold``.
        min_area: drop instances with fewer pixels (original image size, after overlap resolution).
        max_instances: keep at most this many per image, highest scores first.
        resolve_overlaps: give each pixel to the highest-scoring kept instance covering it.
        batch_size: images per teacher call (does not change the result, so not part of the key).
    """

    score_threshold: float = 0.5
    class_threshold: float = 0.7
    mask_threshold: float = 0.5
    min_area: int = 16
    max_instances: int = 50
    resolve_overlaps: bool = True
    batch_size: int = 8

    def __post_init__(self) -> None:
        for name in ("score_threshold", "class_threshold", "mask_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"PseudoLabelConfig.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.min_area < 0 or self.max_instances < 1 or self.batch_size < 1:
            raise ValueError("PseudoLabelConfig needs min_area >= 0, max_instances >= 1 and batch_size >= 1, got "
                             f"{self.min_area}, {self.max_instances}, {self.batch_size}")

    def labeling_rule(self) -> dict[str, Any]:
        """The fields that decide which pseudo-labels come out (everything but ``batch_size``)."""
        rule = asdict(self)
        del rule["batch_size"]
        return rule


@dataclass(frozen=True)
class PseudoLabelStore:
    """A finished store.

    Attributes:
        path: the store directory (``pseudo_labels.json`` and ``manifest.json`` inside).
        key: its content hash (the directory name).
        reused: True when an existing store was loaded and the teacher did not run.
        dataset: the unlabeled records (same ``image_id`` and ``path``) with the pseudo-labels as
            annotations, ``Annotation.score`` set.
        stats: ``{"images": int, "instances": int, "per_class": {name: int}, "mean_score": float}``.
    """

    path: Path
    key: str
    reused: bool
    dataset: Dataset
    stats: dict[str, Any]


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1.0 - _EPS)
    return (np.log(p) - np.log1p(-p)).astype(np.float32)


def query_scores(class_prob: np.ndarray, mask_prob: np.ndarray, mask_threshold: float) -> tuple[np.ndarray, ...]:
    """Per query: best real class ``(K,)`` int64, its probability ``(K,)`` and the deploy score ``(K,)``.

    ``class_prob`` is ``(K, C+1)`` (last = no-object), ``mask_prob`` ``(K, h, w)``; the score is the
    class probability times the mean mask probability over the pixels above ``mask_threshold``
    (0 for an empty mask).
    """
    real = np.asarray(class_prob, np.float32)[:, :-1]
    labels = real.argmax(axis=1).astype(np.int64)
    prob = real[np.arange(real.shape[0]), labels]
    mask_prob = np.asarray(mask_prob, np.float32)
    inside = mask_prob > mask_threshold
    count = inside.sum(axis=(1, 2))
    mean_inside = np.where(count > 0, (mask_prob * inside).sum(axis=(1, 2)) / np.maximum(count, 1), 0.0)
    return labels, prob, (prob * mean_inside).astype(np.float32)


def instances_from_queries(
    class_prob: np.ndarray, mask_prob: np.ndarray, info: PreprocessInfo, cfg: PseudoLabelConfig
) -> Instances:
    """Hard pseudo-labels of one image from its teacher queries.

    Args:
        class_prob: ``(K, C+1)`` class probabilities, last = no-object.
        mask_prob: ``(K, h, w)`` mask probabilities on the stride grid of the padded input.
        info: how the image was preprocessed (gives the original size).
        cfg: thresholds.

    Returns:
        Instances at ``info.original_size``, sorted by descending score, at most ``cfg.max_instances``,
        each with at least ``max(cfg.min_area, 1)`` pixels, disjoint when ``cfg.resolve_overlaps``.
    """
    mask_prob = np.asarray(mask_prob, np.float32)
    labels, prob, scores = query_scores(class_prob, mask_prob, cfg.mask_threshold)
    candidates = np.flatnonzero((prob > cfg.class_threshold) & (scores > cfg.score_threshold))
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    logits = _logit(mask_prob[order])
    threshold = float(_logit(cfg.mask_threshold))
    claimed = np.zeros(info.original_size, bool)
    kept: list[tuple[int, np.ndarray]] = []
    # One query at a time, best first: a pixel goes to the best instance that is actually kept, and
    # at most max_instances full-size masks are ever held in memory.
    for query, z in zip(order, logits):
        mask = postprocess(scores[query:query + 1], labels[query:query + 1], z[None], info,
                           score_threshold=-math.inf, mask_threshold=threshold).masks[0]
        if cfg.resolve_overlaps:
            mask &= ~claimed
        if mask.sum() < max(cfg.min_area, 1):  # an empty mask is never a label
            continue
        if cfg.resolve_overlaps:
            claimed |= mask
        kept.append((int(query), mask))
        if len(kept) == cfg.max_instances:
            break
    if not kept:
        return Instances.empty(info.original_size)
    index = np.array([q for q, _ in kept])
    return Instances(info.original_size, np.stack([m for _, m in kept]), labels[index], scores[index])


def store_key(
    *,
    teacher_hash: str,
    images: Sequence[ImageRecord],
    cfg: PseudoLabelConfig,
    input_size: Sequence[int],
    categories: CategorySet | None = None,
) -> str:
    """sha256 over the teacher's weights hash, each image's id, file name and content hash, the labeling
    rule, the input size and (when given) the classes. Image bytes are hashed, so a file replaced under
    the same name changes the key."""
    payload = {
        "format": STORE_FORMAT,
        "teacher": teacher_hash,
        "images": [[r.image_id, r.file_name, hash_file(r.path)] for r in images],
        "rule": cfg.labeling_rule(),
        "input_size": [int(v) for v in input_size],
        "categories": None if categories is None else categories.coco_categories(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _annotations(instances: Instances) -> tuple[Annotation, ...]:
    rles = masks_to_rles(instances.masks)
    return tuple(Annotation(int(label), compress_rle(rle), False, float(score))
                 for rle, label, score in zip(rles, instances.labels.tolist(), instances.scores.tolist()))


@contextlib.contextmanager
def _eval_mode(teacher: Teacher) -> Iterator[None]:
    """Eval mode while labeling (dropout must not vary between images), the caller's mode afterwards."""
    module = teacher if isinstance(teacher, torch.nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    try:
        yield
    finally:
        if was_training:
            module.train()


def _check_size(record: ImageRecord, info: PreprocessInfo) -> None:
    if info.original_size != (record.height, record.width):
        h, w = info.original_size
        raise DatasetError(record.path, f"image is {h}x{w} (HxW) but the dataset says {record.height}x{record.width}")


@torch.inference_mode()
def label_records(
    teacher: Teacher,
    records: Sequence[ImageRecord],
    *,
    input_size: tuple[int, int],
    cfg: PseudoLabelConfig,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> list[ImageRecord]:
    """Run ``teacher`` over ``records`` in batches; the same records with pseudo-label annotations."""
    labeled: list[ImageRecord] = []
    with _eval_mode(teacher):
        for start in range(0, len(records), cfg.batch_size):
            chunk = records[start:start + cfg.batch_size]
            batch, infos = preprocess_batch([read_image(r.path) for r in chunk], input_size)
            out = teacher.predict_queries(torch.from_numpy(batch).to(device))
            class_prob, mask_prob = out["class_prob"].float().cpu().numpy(), out["mask_prob"].float().cpu().numpy()
            for i, (record, info) in enumerate(zip(chunk, infos)):
                _check_size(record, info)
                annotations = _annotations(instances_from_queries(class_prob[i], mask_prob[i], info, cfg))
                labeled.append(replace(record, annotations=annotations))
            if progress is not None:
                progress(len(labeled), len(records))
    return labeled


def store_stats(dataset: Dataset) -> dict[str, Any]:
    """``{"images", "instances", "per_class": {class name: count}, "mean_score"}`` of a pseudo-labeled set."""
    anns = [a for r in dataset.records for a in r.annotations or ()]
    per_class = {name: 0 for name in dataset.categories.names}
    for a in anns:
        per_class[dataset.categories.names[a.category]] += 1
    mean = float(np.mean([a.score for a in anns])) if anns else 0.0
    return {"images": len(dataset.records), "instances": len(anns), "per_class": per_class, "mean_score": mean}


def _load_store(path: Path, key: str, unlabeled: Dataset) -> tuple[Dataset, dict] | None:
    """The pseudo-labeled dataset and stats of a complete store, or ``None`` when it is damaged or not ours.

    The key fixes every image's id and file name, so the stored annotations are put back on the
    current records (keeping their resolved paths) without resolving file names again.
    """
    manifest = load_json_object(path / MANIFEST_FILE, lambda *_: None)
    data = load_json_object(path / LABELS_FILE, lambda *_: None)
    if manifest is None or data is None or manifest.get("key") != key or "stats" not in manifest:
        return None
    index = {sid: i for i, sid in enumerate(unlabeled.categories.source_ids)}
    grouped: dict[int, list[Annotation]] = {r.image_id: [] for r in unlabeled.records}
    try:
        for ann in data["annotations"]:
            rle = compress_rle(ann["segmentation"])
            grouped[ann["image_id"]].append(Annotation(index[ann["category_id"]], rle, False, ann.get("score", 1.0)))
    except (KeyError, TypeError, ValueError):
        return None
    records = tuple(replace(r, annotations=tuple(grouped[r.image_id])) for r in unlabeled.records)
    return pseudo_dataset(unlabeled, records, path), manifest["stats"]


def pseudo_dataset(unlabeled: Dataset, records: tuple[ImageRecord, ...], path: Path) -> Dataset:
    return Dataset(f"{unlabeled.name}-pseudo", unlabeled.categories, records, path / LABELS_FILE,
                   unlabeled.image_root, {"format": "coco", "pseudo_labels": path.name})


@contextlib.contextmanager
def _progress_bar(console: Any, total: int, callback: Callable[[int, int], None] | None) -> Iterator[Callable]:
    """A ``(done, total)`` callback feeding a rich bar on ``console`` (when given) and ``callback``."""
    if console is None:
        yield callback or (lambda done, total: None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("pseudo-labeling", total=total)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done)
            if callback is not None:
                callback(done, total)

        yield update


def build_pseudo_labels(
    teacher: Teacher,
    unlabeled: Dataset,
    *,
    out_root: Path,
    teacher_hash: str,
    input_size: tuple[int, int],
    cfg: PseudoLabelConfig = PseudoLabelConfig(),
    progress: Callable[[int, int], None] | None = None,
    device: str | torch.device = "cpu",
    console: Any = None,
) -> PseudoLabelStore:
    """Pseudo-label ``unlabeled`` with ``teacher`` into ``out_root/<key>/``, or reuse that store.

    Writes ``pseudo_labels.json`` (COCO instances, a ``"score"`` per annotation, the dataset's
    categories) and ``manifest.json`` (key, teacher hash, labeling rule, input size, stats, timing).
    ``progress(done, total)`` is called after each batch; ``console`` (a rich Console) shows a bar.
    """
    key = store_key(teacher_hash=teacher_hash, images=unlabeled.records, cfg=cfg, input_size=input_size,
                    categories=unlabeled.categories)
    path = Path(out_root) / key
    if path.is_dir() and (found := _load_store(path, key, unlabeled)) is not None:
        return PseudoLabelStore(path, key, True, *found)
    start = time.perf_counter()
    # overwrite: a directory under this key that did not load is damaged, and is replaced only at the end.
    with atomic_directory(path, overwrite=True) as scratch:
        with _progress_bar(console, len(unlabeled.records), progress) as report:
            records = label_records(teacher, unlabeled.records, input_size=tuple(input_size), cfg=cfg,
                                    device=device, progress=report)
        dataset = pseudo_dataset(unlabeled, tuple(records), path)
        stats = store_stats(dataset)
        write_coco(dataset, scratch / LABELS_FILE)
        seconds = time.perf_counter() - start
        atomic_write_json(scratch / MANIFEST_FILE, {
            "key": key, "format": STORE_FORMAT, "teacher_hash": teacher_hash, "rule": cfg.labeling_rule(),
            "batch_size": cfg.batch_size, "input_size": list(input_size), "source": str(unlabeled.source),
            "stats": stats, "seconds": seconds, "images_per_second": len(records) / max(seconds, 1e-9),
        }, indent=2)
    return PseudoLabelStore(path, key, False, dataset, stats)
