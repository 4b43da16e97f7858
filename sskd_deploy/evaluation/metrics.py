"""COCO mask AP through pycocotools, from files or from in-memory predictions.

Both entry points normalise their inputs into one in-memory COCO ground truth (every
segmentation as compressed RLE, annotation ids renumbered from 1) and one list of detections,
then run ``COCOeval(iouType="segm")`` with the COCO defaults (10 IoU thresholds, maxDets 100).
pycocotools' ``loadRes`` is bypassed on purpose: it crashes on an empty result list, mutates the
caller's dicts and, when a result carries a ``bbox``, uses the box area instead of the mask area
to sort detections into small/medium/large.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Container, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sskd_deploy.data.records import Dataset
from sskd_deploy.errors import DatasetError, InputError
from sskd_deploy.evaluation.postprocess import instances_to_coco_results
from sskd_deploy.segmentation import segmentation_to_rle
from sskd_deploy.structures import Instances, compress_rle, rle_area, rle_bbox

if TYPE_CHECKING:
    from rich.table import Table

MAX_DETS = 100
_AREAS = ("all", "small", "medium", "large")


@dataclass(frozen=True)
class EvalResult:
    """Mask AP as fractions in ``[0, 1]``; ``None`` where undefined (no ground truth in range)."""

    ap: float | None
    ap50: float | None
    ap75: float | None
    ap_small: float | None
    ap_medium: float | None
    ap_large: float | None
    per_class: dict[str, float | None]
    num_images: int
    num_predictions: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the field names as keys (``per_class`` maps class name -> AP)."""
        return asdict(self)


def _field(entry: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(entry, dict):
        raise ValueError(f"expected an object, got {type(entry).__name__}")
    if key not in entry:
        raise ValueError(f"missing key '{key}'")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"'{key}' has type {type(value).__name__}")
    return value


def _positive(value: int, key: str) -> int:
    if value <= 0:
        raise ValueError(f"'{key}' must be positive, got {value}")
    return value


def _image_of(
    entry: Any, images: dict[int, dict], category_ids: Container[int], where: tuple[str, str]
) -> dict:
    """The image of an annotation or result ``entry``, after checking that its ``image_id`` is one
    of ``images`` and its ``category_id`` one of ``category_ids`` (``where``: how to name the two)."""
    image = images.get(_field(entry, "image_id", int))
    if image is None:
        raise ValueError(f"image_id {entry['image_id']} is not in {where[0]}")
    if _field(entry, "category_id", int) not in category_ids:
        raise ValueError(f"category_id {entry['category_id']} is not in {where[1]}")
    return image


def _gt_tables(raw: dict[str, Any], name: str) -> tuple[dict[int, dict], dict[int, dict]]:
    """Validated ``{id: image}`` (id, height, width) and ``{id: category}`` (id, name) tables."""
    images: dict[int, dict] = {}
    categories: dict[int, dict] = {}
    for i, item in enumerate(raw["images"]):
        try:
            height, width = (_positive(_field(item, key, int), key) for key in ("height", "width"))
            images[_field(item, "id", int)] = {"id": item["id"], "height": height, "width": width}
        except (TypeError, ValueError) as err:
            raise DatasetError(name, f"image {i}: {err}") from None
    for i, item in enumerate(raw["categories"]):
        try:
            categories[_field(item, "id", int)] = {"id": item["id"], "name": _field(item, "name", str)}
        except (TypeError, ValueError) as err:
            raise DatasetError(name, f"category {i}: {err}") from None
    if len(images) != len(raw["images"]) or len(categories) != len(raw["categories"]):
        raise DatasetError(name, "duplicate image or category ids")
    return images, categories


def _gt_from_json(raw: Any, name: str) -> dict[str, Any]:
    """Validate a COCO instances dict and return the normalised ground truth (new dicts)."""
    keys = ("images", "annotations", "categories")
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), list) for k in keys):
        raise DatasetError(name, f"not a COCO instances file (needs the lists {', '.join(keys)})")
    images, categories = _gt_tables(raw, name)
    if not images:
        raise DatasetError(name, "has no images to evaluate on")
    annotations = []
    for i, ann in enumerate(raw["annotations"]):
        try:
            image = _image_of(ann, images, categories, ("'images'", "'categories'"))
            rle = segmentation_to_rle(ann.get("segmentation"), image["height"], image["width"])
        except (TypeError, ValueError) as err:
            raise DatasetError(name, f"annotation {i}: {err}") from None
        # Keep a given area: official COCO areas come from polygons and decide small/medium/large.
        area = ann.get("area")
        area = float(area) if isinstance(area, (int, float)) and not isinstance(area, bool) else rle_area(rle)
        annotations.append({"image_id": image["id"], "category_id": ann["category_id"], "segmentation": rle,
                            "area": area, "iscrowd": int(bool(ann.get("iscrowd", 0))), "bbox": rle_bbox(rle)})
    return {"images": [*images.values()], "categories": [*categories.values()], "annotations": annotations}


def _detections(raw: Any, gt: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """Validate a COCO results list against ``gt`` and return normalised detections."""
    if not isinstance(raw, list):
        raise InputError(name, f"expected a JSON list of result entries, got {type(raw).__name__}")
    images = {img["id"]: img for img in gt["images"]}
    category_ids = {cat["id"] for cat in gt["categories"]}
    detections = []
    for i, entry in enumerate(raw):
        try:
            image = _image_of(entry, images, category_ids, ("the ground truth", "the ground truth"))
            score = float(_field(entry, "score", (int, float)))
            if not math.isfinite(score):
                raise ValueError(f"score {score} is not finite")
            segmentation = _field(entry, "segmentation", (dict, list))
            rle = segmentation_to_rle(segmentation, image["height"], image["width"])
        except (TypeError, ValueError) as err:
            raise InputError(name, f"entry {i}: {err}") from None
        detections.append({"image_id": image["id"], "category_id": entry["category_id"], "segmentation": rle,
                           "score": score, "area": rle_area(rle), "bbox": rle_bbox(rle), "iscrowd": 0})
    return detections


def _coco(images: list[dict], categories: list[dict], annotations: list[dict]) -> COCO:
    coco = COCO()
    # pycocotools treats a matched id of 0 as "unmatched": number from 1.
    coco.dataset = {"images": images, "categories": categories,
                    "annotations": [dict(ann, id=i + 1) for i, ann in enumerate(annotations)]}
    coco.createIndex()
    return coco


def _mean_precision(precision: np.ndarray) -> float | None:
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else None


def _run_cocoeval(gt: dict[str, Any], detections: list[dict[str, Any]]) -> EvalResult:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports progress with print()
        coco_gt = _coco(gt["images"], gt["categories"], gt["annotations"])
        coco_dt = _coco(gt["images"], gt["categories"], detections)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.params.maxDets = [1, 10, MAX_DETS]
        evaluator.evaluate()
        evaluator.accumulate()
    params = evaluator.params
    # precision: (iou thresholds T, recall thresholds R, categories K, area ranges A, maxDets M)
    precision = evaluator.eval["precision"][..., params.maxDets.index(MAX_DETS)]
    at_iou = {t: int(np.flatnonzero(np.isclose(params.iouThrs, t))[0]) for t in (0.5, 0.75)}
    area = {label: params.areaRngLbl.index(label) for label in _AREAS}
    names = {cat["id"]: cat["name"] for cat in gt["categories"]}
    per_class: dict[str, float | None] = {}
    for k, cat_id in enumerate(params.catIds):
        key = names[cat_id] if names[cat_id] not in per_class else f"{names[cat_id]} (id {cat_id})"
        per_class[key] = _mean_precision(precision[:, :, k, area["all"]])
    return EvalResult(
        ap=_mean_precision(precision[..., area["all"]]),
        ap50=_mean_precision(precision[at_iou[0.5], ..., area["all"]]),
        ap75=_mean_precision(precision[at_iou[0.75], ..., area["all"]]),
        ap_small=_mean_precision(precision[..., area["small"]]),
        ap_medium=_mean_precision(precision[..., area["medium"]]),
        ap_large=_mean_precision(precision[..., area["large"]]),
        per_class=per_class,
        num_images=len(gt["images"]),
        num_predictions=len(detections),
    )


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, expected a JSON file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"not valid JSON ({err})") from None


def evaluate_coco(
    gt: Path | str | dict, predictions: Path | str | list[dict], *, gt_name: str | None = None,
    pred_name: str | None = None,
) -> EvalResult:
    """Mask AP of COCO results against a COCO instances ground truth (files or parsed JSON).

    ``gt_name`` / ``pred_name`` name in-memory inputs in error messages (default: the path).
    Raises DatasetError for a malformed ground truth and InputError for malformed results.
    """
    if isinstance(gt, (str, Path)):
        gt_name, gt = gt_name or str(gt), _load_json(Path(gt))
    if isinstance(predictions, (str, Path)):
        pred_name, predictions = pred_name or str(predictions), _load_json(Path(predictions))
    normalised = _gt_from_json(gt, gt_name or "<ground truth>")
    return _run_cocoeval(normalised, _detections(predictions, normalised, pred_name or "<predictions>"))


def evaluate_instances(dataset: Dataset, predictions: Mapping[int, Instances]) -> EvalResult:
    """Mask AP of in-memory predictions (``image_id -> Instances`` with contiguous labels).

    Only labeled records are evaluated; predictions for unlabeled records are ignored and images
    without an entry in ``predictions`` count as having no detections.
    """
    labeled = {r.image_id: r for r in dataset.records if r.labeled}
    if not labeled:
        raise DatasetError(dataset.source, "no labeled images to evaluate")
    known = {r.image_id for r in dataset.records}
    images, annotations, detections = [], [], []
    for image_id, record in labeled.items():
        images.append({"id": image_id, "height": record.height, "width": record.width})
        for ann in record.annotations or ():
            rle = compress_rle(ann.rle)
            category_id = dataset.categories.source_ids[ann.category]
            annotations.append({"image_id": image_id, "category_id": category_id, "segmentation": rle,
                                "area": rle_area(rle), "iscrowd": int(ann.iscrowd), "bbox": rle_bbox(rle)})
    for image_id, instances in predictions.items():
        if image_id not in known:
            raise ValueError(f"predictions for image_id {image_id}, which is not in dataset {dataset.name}")
        record = labeled.get(image_id)
        if record is None:
            continue
        if instances.image_size != (record.height, record.width):
            raise ValueError(f"image_id {image_id}: predictions of size {instances.image_size}, "
                             f"image is {(record.height, record.width)}")
        for result in instances_to_coco_results(instances, image_id, dataset.categories):
            detections.append(dict(result, area=rle_area(result["segmentation"]), iscrowd=0))
    gt = {"images": images, "categories": dataset.categories.coco_categories(), "annotations": annotations}
    return _run_cocoeval(gt, detections)


def format_eval_table(result: EvalResult, title: str = "mask AP") -> Table:
    """A rich table of the summary metrics and per-class AP, in percent with one decimal."""
    from rich.table import Table  # rich is only needed when printing
    from rich.text import Text

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100.0 * value:.1f}"

    table = Table(title=title, caption=f"{result.num_images} images, {result.num_predictions} predictions")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for label, value in (("AP", result.ap), ("AP50", result.ap50), ("AP75", result.ap75),
                         ("APs", result.ap_small), ("APm", result.ap_medium), ("APl", result.ap_large)):
        table.add_row(label, pct(value))
    table.add_section()
    for name, value in result.per_class.items():
        table.add_row(Text(f"AP[{name}]"), pct(value))  # Text: class names are not markup
    return table
