"""Cityscapes fine annotations, read from the native ``gtFine`` instance id images.

Layout: ``root/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` with its ground truth in
``root/gtFine/<split>/<city>/<stem>_gtFine_instanceIds.png``. Each pixel of the (16-bit) id image
holds ``class_id * 1000 + instance`` for a separated instance, or the bare ``class_id`` for stuff
and for groups of things that were not separated. Only the 8 thing classes evaluated by the
Cityscapes instance benchmark are kept (caravan and trailer are left out, as the benchmark does);
a bare thing class id becomes one ``iscrowd`` region, which evaluation ignores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sskd_deploy.data.image_io import image_size, read_label_png
from sskd_deploy.data.paths import Report, raise_problem, unsafe_name_problem
from sskd_deploy.data.records import Annotation, CategorySet, Dataset, ImageRecord
from sskd_deploy.errors import InputError
from sskd_deploy.structures import masks_to_rles

CITYSCAPES_THING_CLASSES: tuple[str, ...] = (
    "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
CITYSCAPES_THING_IDS: tuple[int, ...] = (24, 25, 26, 27, 28, 31, 32, 33)
IMAGE_SUFFIX = "_leftImg8bit.png"
GT_SUFFIX = "_gtFine_instanceIds.png"
_INSTANCE_OFFSET = 1000


def cityscapes_categories() -> CategorySet:
    return CategorySet(CITYSCAPES_THING_CLASSES, CITYSCAPES_THING_IDS)


def read_cityscapes(root: Path, split: str = "train", *, name: str | None = None) -> Dataset:
    """Read one split; raise :class:`DatasetError` on the first problem."""
    dataset = parse_cityscapes(root, split, name=name, report=raise_problem)
    assert dataset is not None  # raise_problem raised otherwise
    return dataset


def parse_cityscapes(
    root: Path, split: str = "train", *, name: str | None = None, report: Report = raise_problem
) -> Dataset | None:
    """Read one split, telling ``report`` about each problem and skipping the images concerned.

    Returns ``None`` when the split's folders are missing or hold no images.
    """
    root = Path(root)
    if (unsafe := unsafe_name_problem(split)) is not None:
        report(root, f"split name {split!r} {unsafe}")
        return None
    image_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for folder in (image_dir, gt_dir):
        if not folder.is_dir():
            report(folder, "folder not found (expected <root>/{leftImg8bit,gtFine}/<split>/<city>/)")
            return None
    images = _find(image_dir, IMAGE_SUFFIX)
    ground_truth = _find(gt_dir, GT_SUFFIX)
    for key in sorted(ground_truth.keys() - images.keys()):
        expected = image_dir / (key + IMAGE_SUFFIX)
        report(ground_truth[key], f"ground truth without an image (expected {expected})")
    if not images:
        report(image_dir, f"no <city>/*{IMAGE_SUFFIX} images found")
        return None
    records = []
    for image_id, key in enumerate(sorted(images), start=1):
        gt_path = ground_truth.get(key, gt_dir / (key + GT_SUFFIX))
        record = _record(image_id, key + IMAGE_SUFFIX, images[key], gt_path, report)
        if record is not None:
            records.append(record)
    meta = {"format": "cityscapes", "split": split}
    name = name or f"cityscapes_{split}"
    return Dataset(name, cityscapes_categories(), tuple(records), root, image_dir, meta)


def _find(folder: Path, suffix: str) -> dict[str, Path]:
    """``{"<city>/<stem>": path}`` for the files ``folder/<city>/<stem><suffix>``."""
    return {
        f"{p.parent.name}/{p.name[: -len(suffix)]}": p.absolute()
        for p in folder.glob(f"*/*{suffix}")
        if p.is_file()
    }


def _record(
    image_id: int, file_name: str, image_path: Path, gt_path: Path, report: Report
) -> ImageRecord | None:
    if not gt_path.is_file():
        report(gt_path, f"file not found (ground truth of {image_path})")
        return None
    try:
        ids = read_label_png(gt_path)
        height, width = image_size(image_path)
    except InputError as err:
        report(err.path, err.problem)
        return None
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        report(gt_path, f"expected a single-channel integer id image, found {ids.dtype} {ids.shape}")
        return None
    if ids.shape != (height, width):
        gt_size = f"{ids.shape[0]}x{ids.shape[1]}"
        report(gt_path, f"is {gt_size} (HxW) but its image {image_path} is {height}x{width}")
        return None
    return ImageRecord(image_id, file_name, image_path, height, width, instances_from_ids(ids))


def instances_from_ids(ids: np.ndarray) -> tuple[Annotation, ...]:
    """Annotations of the thing classes in an instance id image ``(H, W)`` of integers.

    Order follows the id values, so crowd regions (bare class ids) come before the instances.
    """
    ids = ids.astype(np.int64, copy=False)
    index = {cid: i for i, cid in enumerate(CITYSCAPES_THING_IDS)}
    annotations = []
    for value in np.unique(ids).tolist():
        crowd = value < _INSTANCE_OFFSET
        class_id = value if crowd else value // _INSTANCE_OFFSET
        if class_id not in index:
            continue  # stuff, void, or a thing class outside the benchmark's 8
        # One mask at a time: full-size Cityscapes frames with ~100 instances would need
        # hundreds of MB as a stacked boolean array.
        (rle,) = masks_to_rles((ids == value)[None])
        annotations.append(Annotation(index[class_id], rle, iscrowd=crowd))
    return tuple(annotations)
