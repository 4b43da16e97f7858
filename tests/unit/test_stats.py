"""Dataset statistics: counts, COCO size buckets, and the human-readable block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sskd_deploy import structures
from sskd_deploy.data import records
from sskd_deploy.data.records import Annotation, CategorySet, Dataset, ImageRecord
from sskd_deploy.data.stats import dataset_statistics, format_statistics
from sskd_deploy.structures import masks_to_rles

H, W = 120, 160
CLASSES = CategorySet(("cat", "dog", "owl"), (3, 7, 9))


def _ann(category: int, h: int, w: int, *, iscrowd: bool = False) -> Annotation:
    mask = np.zeros((1, H, W), bool)
    mask[0, :h, :w] = True
    return Annotation(category, masks_to_rles(mask)[0], iscrowd=iscrowd)


def _record(image_id: int, anns: tuple[Annotation, ...] | None) -> ImageRecord:
    return ImageRecord(image_id, f"{image_id}.png", Path(f"/nowhere/{image_id}.png"), H, W, anns)


def _dataset(*recs: ImageRecord) -> Dataset:
    return Dataset("toy", CLASSES, tuple(recs), Path("/nowhere/toy.json"), Path("/nowhere"))


def test_counts_sizes_and_areas() -> None:
    ds = _dataset(
        _record(1, (_ann(0, 10, 10), _ann(1, 32, 32), _ann(1, 100, 100, iscrowd=True))),
        _record(2, (_ann(0, 96, 96), _ann(0, 95, 96), _ann(1, 31, 33))),
        _record(3, ()),
        _record(4, None),
    )
    stats = dataset_statistics(ds)
    assert stats["images"] == 4 and stats["labeled_images"] == 3
    assert stats["instances"] == 5 and stats["crowd"] == 1
    assert stats["instances_per_class"] == {"cat": 3, "dog": 2, "owl": 0}
    assert stats["instances_per_image"] == {"min": 0, "mean": pytest.approx(5 / 3, abs=1e-3), "max": 3}
    # 32*32 = 1024 is the first medium area and 96*96 = 9216 the first large one (COCO)
    assert stats["sizes"] == {"small": 2, "medium": 2, "large": 1}
    assert stats["area_px"] == {"min": 100, "median": 1024.0, "max": 9216}
    assert all(isinstance(stats["area_px"][k], int) for k in ("min", "max"))


def test_reads_rle_areas_without_decoding_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("statistics must not decode masks")

    monkeypatch.setattr(structures, "rles_to_masks", forbidden)
    monkeypatch.setattr(records, "rles_to_masks", forbidden)
    stats = dataset_statistics(_dataset(_record(1, (_ann(2, 4, 5),))))
    assert stats["area_px"]["max"] == 20.0 and stats["instances_per_class"]["owl"] == 1


def test_unlabeled_and_empty_datasets() -> None:
    for ds in (_dataset(), _dataset(_record(1, None), _record(2, None))):
        stats = dataset_statistics(ds)
        assert stats["labeled_images"] == 0 and stats["instances"] == 0
        assert stats["instances_per_image"] == {"min": 0, "mean": 0, "max": 0}
        assert stats["area_px"] == {"min": 0, "median": 0, "max": 0}
        assert format_statistics(stats).endswith("(unlabeled)")


def test_format_statistics_block() -> None:
    ds = _dataset(_record(1, (_ann(0, 10, 10), _ann(1, 40, 40))), _record(2, (_ann(1, 5, 5, iscrowd=True),)))
    text = format_statistics(dataset_statistics(ds))
    lines = text.splitlines()
    assert len(lines) == 5
    assert lines[0].split() == ["images", "2", "(2", "labeled)"]
    assert "instances  2 (+1 crowd), per image min 0 / mean 1 / max 2" in text
    assert "cat 1, dog 1, owl 0" in text
    assert "small 1, medium 1, large 0" in text
    assert "min 100 / median 850 / max 1600" in text
