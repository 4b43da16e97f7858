"""COCO reading and writing on a hand-written file: polygons, both RLE forms, crowd regions,
sparse category ids, images-only files and the round trip through write_coco."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sskd_deploy.data.coco import default_image_root, read_coco, write_coco
from sskd_deploy.data.records import Dataset
from sskd_deploy.errors import DatasetError
from tests.unit.readers_fixtures import EXPECTED_COCO, write_coco_fixture


@pytest.fixture()
def coco_file(tmp_path: Path) -> Path:
    return write_coco_fixture(tmp_path / "ds")


def _by_name(dataset: Dataset) -> dict:
    return {r.file_name: r for r in dataset.records}


def test_categories_are_remapped_in_id_order(coco_file: Path) -> None:
    dataset = read_coco(coco_file)
    assert dataset.categories.names == ("car", "truck", "zebra")
    assert dataset.categories.source_ids == (3, 7, 90)
    assert dataset.name == "train" and dataset.meta["format"] == "coco"


def test_records_keep_file_order_ids_and_sizes(coco_file: Path) -> None:
    dataset = read_coco(coco_file)
    assert [(r.image_id, r.file_name, r.height, r.width) for r in dataset.records] == [
        (5, "a.png", 20, 30), (2, "sub/b.jpg", 16, 24), (9, "c.webp", 8, 10),
    ]
    root = coco_file.parent.parent / "images"
    assert dataset.image_root == root
    assert all(r.path == (root / r.file_name).absolute() and r.path.is_file() for r in dataset.records)


@pytest.mark.parametrize("file_name", list(EXPECTED_COCO))
def test_masks_decode_to_what_was_drawn(coco_file: Path, file_name: str) -> None:
    record = _by_name(read_coco(coco_file))[file_name]
    expected = EXPECTED_COCO[file_name]
    instances = record.instances()
    assert record.labeled and len(record.annotations) == len(expected)
    assert instances.labels.tolist() == [c for c, _, _ in expected]
    assert instances.iscrowd.tolist() == [crowd for _, crowd, _ in expected]
    for got, (_, _, drawn) in zip(instances.masks, expected):
        np.testing.assert_array_equal(got, drawn)


def test_annotations_hold_compressed_rle_with_str_counts(coco_file: Path) -> None:
    for record in read_coco(coco_file).records:
        for ann in record.annotations:
            assert isinstance(ann.rle["counts"], str)
            assert ann.rle["size"] == [record.height, record.width]


def test_default_image_root(tmp_path: Path) -> None:
    (tmp_path / "x" / "annotations").mkdir(parents=True)
    assert default_image_root(tmp_path / "x" / "annotations" / "a.json") == tmp_path / "x" / "annotations"
    (tmp_path / "x" / "images").mkdir()
    assert default_image_root(tmp_path / "x" / "annotations" / "a.json") == tmp_path / "x" / "images"
    assert default_image_root(tmp_path / "x" / "a.json") == tmp_path / "x"


def test_explicit_image_root(coco_file: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    (coco_file.parent.parent / "images").rename(moved)
    with pytest.raises(DatasetError, match="file not found"):
        read_coco(coco_file)
    assert read_coco(coco_file, moved).records[0].path == (moved / "a.png").absolute()


def test_images_only_file_is_unlabeled(coco_file: Path) -> None:
    data = json.loads(coco_file.read_text())
    unlabeled = coco_file.with_name("unlabeled.json")
    unlabeled.write_text(json.dumps({"images": data["images"]}))
    dataset = read_coco(unlabeled)
    assert all(r.annotations is None for r in dataset.records) and not dataset.labeled
    assert len(dataset.categories) == 0


def test_empty_annotation_list_is_labeled(coco_file: Path) -> None:
    data = json.loads(coco_file.read_text())
    data["annotations"] = []
    coco_file.write_text(json.dumps(data))
    dataset = read_coco(coco_file)
    assert dataset.labeled and all(r.annotations == () for r in dataset.records)


def test_check_images_reads_headers(coco_file: Path) -> None:
    assert len(read_coco(coco_file, check_images=True)) == 3


def test_round_trip_through_write_coco(coco_file: Path, tmp_path: Path) -> None:
    original = read_coco(coco_file)
    out = write_coco(original, tmp_path / "out" / "copy.json")
    written = json.loads(out.read_text())
    assert sorted(c["id"] for c in written["categories"]) == [3, 7, 90]
    assert {a["category_id"] for a in written["annotations"]} == {3, 7, 90}
    again = read_coco(out, original.image_root)
    assert again.categories == original.categories
    assert again.records == original.records
    crowd = [a for a in written["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["area"] == EXPECTED_COCO["sub/b.jpg"][0][2].sum()
    assert crowd[0]["bbox"] == [0.0, 3.0, 24.0, 6.0]


def test_write_coco_of_unlabeled_dataset_omits_annotations(coco_file: Path, tmp_path: Path) -> None:
    data = json.loads(coco_file.read_text())
    coco_file.write_text(json.dumps({"images": data["images"]}))
    out = write_coco(read_coco(coco_file), tmp_path / "u.json")
    assert "annotations" not in json.loads(out.read_text())
    assert not read_coco(out, coco_file.parent.parent / "images").labeled


def test_scores_round_trip(coco_file: Path, tmp_path: Path) -> None:
    data = json.loads(coco_file.read_text())
    data["annotations"][0]["score"] = 0.25
    coco_file.write_text(json.dumps(data))
    dataset = read_coco(coco_file)
    assert dataset.records[0].annotations[0].score == 0.25
    again = read_coco(write_coco(dataset, tmp_path / "s.json"), dataset.image_root)
    assert [a.score for a in again.records[0].annotations] == [0.25, 1.0]
