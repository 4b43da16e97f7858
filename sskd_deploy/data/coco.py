"""COCO instance JSON: read it into a :class:`Dataset`, write a :class:`Dataset` back.

Reading validates everything it trusts later: entry types, unique ids, references between
annotations, images and categories, file names that stay inside the image root, and masks that
fit the image (:mod:`sskd_deploy.segmentation` checks every segmentation before pycocotools sees
it). Category ids are remapped to contiguous indices in id order (COCO's 1..90 with gaps become
0..79), as detectron2 does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sskd_deploy.data.image_io import image_size
from sskd_deploy.data.paths import Report, join_inside, raise_problem, read_text, unsafe_name_problem
from sskd_deploy.data.records import Annotation, CategorySet, Dataset, ImageRecord
from sskd_deploy.errors import DatasetError, InputError
from sskd_deploy.io import atomic_write_json
from sskd_deploy.segmentation import segmentation_to_rle
from sskd_deploy.structures import rle_area, rle_bbox

_IMAGE_KEYS = ("id", "file_name", "height", "width")


def default_image_root(annotation_file: Path) -> Path:
    """``X/images`` when the JSON sits in ``X/annotations/`` and ``X/images`` exists, else its folder."""
    folder = Path(annotation_file).parent
    if folder.name == "annotations" and (folder.parent / "images").is_dir():
        return folder.parent / "images"
    return folder


def read_coco(
    annotation_file: Path,
    image_root: Path | None = None,
    *,
    name: str | None = None,
    check_images: bool = False,
) -> Dataset:
    """Read a COCO instances file; raise :class:`DatasetError` on the first problem.

    A file without an ``"annotations"`` key lists unlabeled images (``annotations=None``); with
    one (even empty) every image is labeled. ``check_images`` also reads every image header and
    compares its size with the file's ``height``/``width``.
    """
    dataset = parse_coco(annotation_file, image_root, name=name, check_images=check_images)
    assert dataset is not None  # raise_problem raised otherwise
    return dataset


def parse_coco(
    annotation_file: Path,
    image_root: Path | None = None,
    *,
    name: str | None = None,
    report: Report = raise_problem,
    check_images: bool = False,
) -> Dataset | None:
    """Read a COCO file, telling ``report`` about each problem and skipping the broken entries.

    Returns ``None`` when the file as a whole is unusable (unreadable, malformed JSON, missing keys).
    """
    file = Path(annotation_file)
    root = Path(image_root) if image_root is not None else default_image_root(file)
    data = load_json_object(file, report)
    if data is None:
        return None
    labeled = "annotations" in data
    required = ("images", "annotations", "categories") if labeled else ("images",)
    for key in ("images", "annotations", "categories"):
        if (key in required or key in data) and not isinstance(data.get(key), list):
            found = "missing" if key not in data else f"a {type(data[key]).__name__}"
            report(file, f"top-level {key!r} must be a list, found {found}")
            return None
    used = {a.get("category_id") for a in data.get("annotations", []) if isinstance(a, dict)}
    used = {c for c in used if _is_int(c)}
    categories = _parse_categories(data.get("categories", []), file, report, used)
    images, skipped = _parse_images(data["images"], file, root, report, check_images)
    grouped: dict[int, list[Annotation]] | None = None
    if labeled:
        grouped = _parse_annotations(data["annotations"], file, images, skipped, categories, report)
    records = tuple(
        ImageRecord(iid, fname, path, h, w, None if grouped is None else tuple(grouped.get(iid, ())))
        for iid, (fname, path, h, w) in images.items()
    )
    return Dataset(name or file.stem, categories, records, file, root, {"format": "coco"})


def load_json_object(file: Path, report: Report = raise_problem) -> dict | None:
    """The top-level JSON object of ``file``, or ``None`` after reporting why it cannot be had."""
    text = read_text(file, report)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        report(file, f"malformed JSON at line {err.lineno} column {err.colno}: {err.msg}")
        return None
    if not isinstance(data, dict):
        report(file, f"top level must be a JSON object, found a {type(data).__name__}")
        return None
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_categories(items: list, file: Path, report: Report, used: set) -> CategorySet:
    """Contiguous classes in source-id order, keeping the source ids.

    A top-level category (no supercategory, or ``"none"``) that only groups others (it is their
    ``supercategory``) and that no annotation uses is not a class: Roboflow's COCO export lists the
    dataset's own name that way, as id 0.
    """
    names: dict[int, str] = {}
    for i, cat in enumerate(items):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            report(file, f"categories[{i}] must be an object with an integer 'id' and a string 'name'")
        elif cat["id"] in names:
            report(file, f"category id {cat['id']} is listed twice")
        else:
            names[cat["id"]] = cat["name"]
    cats = [c for c in items if isinstance(c, dict)]
    groups = {c.get("supercategory") for c in cats if c.get("supercategory") not in (None, "none", c.get("name"))}
    tops = {c.get("id") for c in cats if c.get("supercategory") in (None, "none")}
    ids = sorted(i for i in names if not (names[i] in groups and i in tops and i not in used))
    return CategorySet(tuple(names[i] for i in ids), tuple(ids))


def _image_entry_problem(i: int, img: Any) -> str | None:
    if not isinstance(img, dict):
        return f"images[{i}] is not an object"
    missing = [k for k in _IMAGE_KEYS if k not in img]
    if missing:
        return f"images[{i}] has no {', '.join(repr(k) for k in missing)}"
    if not _is_int(img["id"]) or not isinstance(img["file_name"], str):
        return f"images[{i}] needs an integer 'id' and a string 'file_name'"
    if not all(_is_int(img[k]) and img[k] > 0 for k in ("height", "width")):
        size = f"height {img['height']!r} / width {img['width']!r}"
        return f"image id {img['id']} has {size}, expected positive integers"
    return None


def _parse_images(
    items: list, file: Path, root: Path, report: Report, check_images: bool
) -> tuple[dict[int, tuple[str, Path, int, int]], set[int]]:
    """``{image_id: (file_name, path, height, width)}`` in file order, and ids of skipped entries."""
    images: dict[int, tuple[str, Path, int, int]] = {}
    skipped: set[int] = set()
    for i, img in enumerate(items):
        problem = _image_entry_problem(i, img)
        if problem is None and img["id"] in images:
            problem = f"image id {img['id']} is listed twice"
        if problem is None and (unsafe := unsafe_name_problem(img["file_name"])):
            problem = f"image id {img['id']} file_name {img['file_name']!r} {unsafe} (image root {root})"
        if problem is not None:
            report(file, problem)
            # Annotations of a skipped image are not reported again; a repeated id keeps its first entry.
            if isinstance(img, dict) and _is_int(img.get("id")) and img["id"] not in images:
                skipped.add(img["id"])
            continue
        path = join_inside(root, img["file_name"])
        if not _image_file_ok(path, img, file, report, check_images):
            skipped.add(img["id"])
            continue
        images[img["id"]] = (img["file_name"], path, img["height"], img["width"])
    return images, skipped


def _image_file_ok(path: Path, img: dict, file: Path, report: Report, check_images: bool) -> bool:
    if not path.is_file():
        report(path, f"file not found (image id {img['id']} of {file})")
        return False
    if not check_images:
        return True
    try:
        height, width = image_size(path)
    except InputError as err:
        report(err.path, err.problem)
        return False
    if (height, width) != (img["height"], img["width"]):
        report(path, f"image is {height}x{width} (HxW) but {file} says {img['height']}x{img['width']}")
        return False
    return True


def _parse_annotations(
    items: list,
    file: Path,
    images: dict[int, tuple[str, Path, int, int]],
    skipped: set[int],
    categories: CategorySet,
    report: Report,
) -> dict[int, list[Annotation]]:
    """Annotations grouped by image id; entries of skipped images are dropped without a second report."""
    grouped: dict[int, list[Annotation]] = {}
    seen: set[int] = set()
    index = {sid: i for i, sid in enumerate(categories.source_ids)}
    for i, ann in enumerate(items):
        if not isinstance(ann, dict) or not _is_int(ann.get("id")):
            report(file, f"annotations[{i}] must be an object with an integer 'id'")
            continue
        aid = ann["id"]
        if aid in seen:
            report(file, f"annotation id {aid} is listed twice")
            continue
        seen.add(aid)
        image_id, category_id = ann.get("image_id"), ann.get("category_id")
        if _is_int(image_id) and image_id in skipped:
            continue
        if not _is_int(image_id) or image_id not in images:
            report(file, f"annotation id {aid} names unknown image_id {image_id!r}")
        elif not _is_int(category_id) or category_id not in index:
            report(file, f"annotation id {aid} names unknown category_id {category_id!r}")
        else:
            _, _, height, width = images[image_id]
            result = _annotation(ann, height, width, index[category_id])
            if isinstance(result, str):
                report(file, f"annotation id {aid} (image id {image_id}): {result}")
            else:
                grouped.setdefault(image_id, []).append(result)
    return grouped


def _annotation(ann: dict, height: int, width: int, category: int) -> Annotation | str:
    """The :class:`Annotation` for one entry, or the problem with it."""
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1) or isinstance(crowd, float):
        return f"iscrowd is {crowd!r}, expected 0 or 1"
    score = ann.get("score", 1.0)
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
        return f"score is {score!r}, expected a number in [0, 1]"
    if "segmentation" not in ann:
        return "has no 'segmentation'"
    try:
        rle = segmentation_to_rle(ann["segmentation"], height, width)
    except ValueError as err:
        return str(err)
    if "bbox" in ann and (problem := _bbox_problem(ann["bbox"], height, width)):
        return problem
    if rle_area(rle) == 0:
        return "empty mask (0 pixels)"
    return Annotation(category, rle, bool(crowd), float(score))


def _bbox_problem(bbox: Any, height: int, width: int, tolerance: float = 1.0) -> str | None:
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return f"bbox {bbox!r} is not [x, y, width, height] of finite numbers"
    x, y, w, h = bbox
    if w < 0 or h < 0:
        return f"bbox {bbox!r} has a negative size"
    if x < -tolerance or y < -tolerance or x + w > width + tolerance or y + h > height + tolerance:
        return f"bbox {bbox!r} lies outside the image (width {width}, height {height})"
    return None


def write_coco(dataset: Dataset, path: Path) -> Path:
    """Write ``dataset`` as a COCO instances file (atomically); round-trips with :func:`read_coco`.

    Category ids are the source ids, so predictions and ground truth stay in the source id space.
    A fully unlabeled dataset is written without an ``"annotations"`` key.
    """
    kinds = {r.labeled for r in dataset.records}
    if len(kinds) > 1:
        problem = f"dataset {dataset.name!r} mixes labeled and unlabeled images; write them apart"
        raise DatasetError(path, problem)
    images = [
        {"id": r.image_id, "file_name": r.file_name, "height": r.height, "width": r.width}
        for r in dataset.records
    ]
    out: dict[str, Any] = {"images": images, "categories": dataset.categories.coco_categories()}
    if kinds != {False}:
        out["annotations"] = _annotation_entries(dataset)
    return atomic_write_json(path, out)


def _annotation_entries(dataset: Dataset) -> list[dict]:
    entries = []
    for record in dataset.records:
        for ann in record.annotations or ():
            entry = {
                "id": len(entries) + 1,
                "image_id": record.image_id,
                "category_id": dataset.categories.source_ids[ann.category],
                "segmentation": {"size": list(ann.rle["size"]), "counts": ann.rle["counts"]},
                "area": rle_area(ann.rle),
                "bbox": rle_bbox(ann.rle),
                "iscrowd": int(ann.iscrowd),
            }
            if ann.score != 1.0:
                entry["score"] = ann.score
            entries.append(entry)
    return entries
