"""Cityscapes gtFine instance id images: class*1000+instance ids, bare thing ids as crowd regions,
stuff and non-benchmark classes ignored, masks compared with the drawn ids pixel for pixel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sskd_deploy.data.cityscapes import (
    CITYSCAPES_THING_CLASSES,
    CITYSCAPES_THING_IDS,
    instances_from_ids,
    read_cityscapes,
)
from sskd_deploy.errors import DatasetError
from tests.unit.readers_fixtures import CITY_H, CITY_W, cityscapes_ids, write_cityscapes_fixture


@pytest.fixture()
def city_root(tmp_path: Path) -> Path:
    return write_cityscapes_fixture(tmp_path / "cityscapes", splits=("train", "val"))


def test_the_eight_thing_classes() -> None:
    expected = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
    assert CITYSCAPES_THING_CLASSES == expected
    assert CITYSCAPES_THING_IDS == tuple(i for i in range(24, 34) if i not in (29, 30))


def test_records_and_layout(city_root: Path) -> None:
    dataset = read_cityscapes(city_root, "val")
    assert dataset.name == "cityscapes_val" and dataset.labeled
    assert dataset.image_root == city_root / "leftImg8bit" / "val"
    assert [r.file_name for r in dataset.records] == [
        "aachen/aachen_000000_000019_leftImg8bit.png", "bonn/bonn_000001_000019_leftImg8bit.png",
    ]
    assert [r.image_id for r in dataset.records] == [1, 2]
    assert all((r.height, r.width) == (CITY_H, CITY_W) and r.path.is_file() for r in dataset.records)
    assert dataset.categories.source_ids == CITYSCAPES_THING_IDS


def test_instances_crowds_and_ignored_ids_pixel_exact(city_root: Path) -> None:
    ids = cityscapes_ids()
    instances = read_cityscapes(city_root).records[0].instances()
    person, car = CITYSCAPES_THING_CLASSES.index("person"), CITYSCAPES_THING_CLASSES.index("car")
    # ordered by id value: 24 (crowd), 24000, 26001, 26002; road (7), 0 and the caravan 29001 are dropped
    assert instances.labels.tolist() == [person, person, car, car]
    assert instances.iscrowd.tolist() == [True, False, False, False]
    for mask, value in zip(instances.masks, (24, 24000, 26001, 26002)):
        np.testing.assert_array_equal(mask, ids == value)


def test_second_frame(city_root: Path) -> None:
    record = read_cityscapes(city_root).records[1]
    instances = record.instances()
    assert instances.labels.tolist() == [CITYSCAPES_THING_CLASSES.index("bicycle")]
    np.testing.assert_array_equal(instances.masks[0], cityscapes_ids() == 26002)


def test_int32_ids_are_read_like_uint16() -> None:
    ids = cityscapes_ids().astype(np.int32)
    assert [a.rle for a in instances_from_ids(ids)] == [a.rle for a in instances_from_ids(cityscapes_ids())]


def test_missing_split_is_an_error(city_root: Path) -> None:
    with pytest.raises(DatasetError, match="leftImg8bit/test: folder not found"):
        read_cityscapes(city_root, "test")


def test_missing_ground_truth_names_the_file(city_root: Path) -> None:
    gt = city_root / "gtFine" / "train" / "bonn" / "bonn_000001_000019_gtFine_instanceIds.png"
    gt.unlink()
    with pytest.raises(DatasetError) as err:
        read_cityscapes(city_root)
    assert str(err.value).startswith(str(gt.absolute())) and "file not found" in str(err.value)


def test_ground_truth_of_another_size_is_an_error(city_root: Path) -> None:
    from PIL import Image

    gt = city_root / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_instanceIds.png"
    Image.fromarray(np.zeros((CITY_H, CITY_W + 1), np.uint16)).save(gt)
    with pytest.raises(DatasetError, match=r"is 12x17 \(HxW\) but its image .* is 12x16"):
        read_cityscapes(city_root)


def test_split_name_cannot_escape(city_root: Path) -> None:
    with pytest.raises(DatasetError, match="escapes"):
        read_cityscapes(city_root, "../train")
