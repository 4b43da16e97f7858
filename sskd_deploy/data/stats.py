"""Summary statistics of a dataset: how many images, instances, of which classes and sizes.

Works on any :class:`~sskd_deploy.data.records.Dataset` (COCO, Cityscapes, synthetic) and reads
areas from the compressed RLEs, never decoding a mask, so it stays cheap on large splits. Size
buckets follow COCO's convention (area below 32^2 is small, below 96^2 medium, else large) so the
numbers line up with COCO's APs/APm/APl.
"""

from __future__ import annotations

import numpy as np

from sskd_deploy.data.records import Dataset
from sskd_deploy.structures import rle_area

SMALL_AREA = 32**2
MEDIUM_AREA = 96**2


def _summary(values: list[float], keys: tuple[str, str, str]) -> dict[str, float]:
    """``{keys[0]: min, keys[1]: mean-or-median, keys[2]: max}`` of counts (so min and max are
    ints); zeros for no values."""
    if not values:
        return dict.fromkeys(keys, 0)
    arr = np.asarray(values, np.float64)
    centre = float(np.median(arr)) if keys[1] == "median" else round(float(arr.mean()), 3)
    return {keys[0]: int(arr.min()), keys[1]: centre, keys[2]: int(arr.max())}


def dataset_statistics(dataset: Dataset) -> dict:
    """Counts of one split; every value is JSON-ready.

    Keys: ``images``; ``labeled_images``; ``instances`` (non-crowd annotations); ``crowd`` (crowd
    regions, counted apart and left out of everything else); ``instances_per_class`` ``{name: n}``
    over every class, zeros included; ``instances_per_image`` ``{min, mean, max}`` over labeled
    images; ``sizes`` ``{small, medium, large}`` by COCO area thresholds; ``area_px``
    ``{min, median, max}``. Summaries are zeros when there is nothing to summarise.
    """
    names = dataset.categories.names
    per_class = dict.fromkeys(names, 0)
    per_image: list[float] = []
    areas: list[float] = []
    crowd = 0
    for record in dataset.records:
        if record.annotations is None:
            continue
        count = 0
        for ann in record.annotations:
            if ann.iscrowd:
                crowd += 1
                continue
            per_class[names[ann.category]] += 1
            areas.append(rle_area(ann.rle))
            count += 1
        per_image.append(count)
    area_arr = np.asarray(areas, np.float64)
    return {
        "images": len(dataset.records),
        "labeled_images": len(per_image),
        "instances": len(areas),
        "crowd": crowd,
        "instances_per_class": per_class,
        "instances_per_image": _summary(per_image, ("min", "mean", "max")),
        "sizes": {
            "small": int((area_arr < SMALL_AREA).sum()),
            "medium": int(((area_arr >= SMALL_AREA) & (area_arr < MEDIUM_AREA)).sum()),
            "large": int((area_arr >= MEDIUM_AREA).sum()),
        },
        "area_px": _summary(areas, ("min", "median", "max")),
    }


def _number(value: float) -> str:
    return f"{value:g}" if float(value) == int(value) else f"{value:.2f}"


def format_statistics(stats: dict) -> str:
    """A few aligned lines for the CLI and notes, e.g.::

        images     400 (40 labeled)
        instances  2013, per image min 1 / mean 5.03 / max 8
        classes    disc 340, box 331, triangle 329, star 350, ring 330, cross 333
        sizes      small 1500, medium 513, large 0 (COCO area < 32^2, < 96^2, larger)
        area px    min 20 / median 412 / max 6100
    """
    if not stats["labeled_images"]:
        return f"images     {stats['images']} (unlabeled)"
    per_image, area = stats["instances_per_image"], stats["area_px"]
    crowd = f" (+{stats['crowd']} crowd)" if stats.get("crowd") else ""
    lines = [
        f"images     {stats['images']} ({stats['labeled_images']} labeled)",
        f"instances  {stats['instances']}{crowd}, per image min {_number(per_image['min'])}"
        f" / mean {_number(per_image['mean'])} / max {_number(per_image['max'])}",
        "classes    " + ", ".join(f"{name} {n}" for name, n in stats["instances_per_class"].items()),
        "sizes      " + ", ".join(f"{k} {stats['sizes'][k]}" for k in ("small", "medium", "large"))
        + " (COCO area < 32^2, < 96^2, larger)",
        f"area px    min {_number(area['min'])} / median {_number(area['median'])}"
        f" / max {_number(area['max'])}",
    ]
    return "\n".join(lines)
