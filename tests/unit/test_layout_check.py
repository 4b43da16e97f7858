"""Dataset-directory discovery (manifest, Cityscapes, annotations folder, COCO file, image folder),
load_dataset by kind, and check_dataset on clean and broken datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sskd_deploy.data.check import check_dataset
from sskd_deploy.data.layout import discover, load_dataset, open_dataset_dir, read_manifest
from sskd_deploy.errors import DatasetError
from tests.unit.readers_fixtures import (
    save_image,
    write_cityscapes_fixture,
    write_coco_fixture,
    write_manifest_fixture,
)


@pytest.fixture()
def manifest_dir(tmp_path: Path) -> Path:
    return write_manifest_fixture(tmp_path / "synth")


def test_manifest_splits(manifest_dir: Path) -> None:
    splits = open_dataset_dir(manifest_dir)
    assert list(splits) == ["train_labeled", "train_unlabeled", "val"]
    assert [len(splits[k]) for k in splits] == [3, 1, 1]
    assert splits["train_labeled"].labeled and not splits["train_unlabeled"].labeled
    # the images-only file adopts the labeled splits' classes
    assert splits["train_unlabeled"].categories == splits["train_labeled"].categories
    assert splits["train_unlabeled"].categories.names == ("car", "truck", "zebra")
    assert splits["val"].name == "val"


def test_manifest_file_path_works_too(manifest_dir: Path) -> None:
    splits = open_dataset_dir(manifest_dir / "dataset.json")
    assert list(splits) == ["train_labeled", "train_unlabeled", "val"]


def _edit_manifest(root: Path, **changes) -> Path:
    path = root / "dataset.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": "other"}, "unknown manifest format 'other' version 1"),
        ({"version": 2}, "version 2"),
        ({"classes": "car"}, "'classes' must be a list"),
        ({"splits": {}}, "'splits' must be a non-empty object"),
        ({"splits": {"x": {"format": "coco", "annotations": "../../etc/passwd"}}},
         r"split 'x' annotations '../../etc/passwd' escapes the dataset root"),
        ({"splits": {"x": {"format": "folder", "images": "/abs"}}},
         "split 'x' images '/abs' is an absolute path"),
        ({"splits": {"x": {"format": "yolo"}}}, "split 'x' needs a 'format' of coco, cityscapes, folder"),
        ({"default_splits": {"val": "nope"}}, "'default_splits'"),
    ],
)
def test_bad_manifests(manifest_dir: Path, changes: dict, message: str) -> None:
    path = _edit_manifest(manifest_dir, **changes)
    with pytest.raises(DatasetError, match=message) as err:
        read_manifest(path)
    assert str(err.value).startswith(str(path))


def test_manifest_classes_must_match(manifest_dir: Path) -> None:
    _edit_manifest(manifest_dir, classes=["car", "truck"])
    with pytest.raises(DatasetError, match="split 'train_labeled' has classes"):
        open_dataset_dir(manifest_dir)


def test_cityscapes_root(tmp_path: Path) -> None:
    root = write_cityscapes_fixture(tmp_path / "cs", splits=("train", "val"))
    splits = open_dataset_dir(root)
    assert list(splits) == ["train", "val"] and all(len(d) == 2 for d in splits.values())


def test_annotations_folder_prefers_instances_files(tmp_path: Path) -> None:
    write_coco_fixture(tmp_path, name="instances_train.json")
    write_coco_fixture(tmp_path, name="instances_val.json")
    (tmp_path / "annotations" / "captions_train.json").write_text('{"images": [], "annotations": [{}]}')
    splits = open_dataset_dir(tmp_path)
    assert list(splits) == ["instances_train", "instances_val"]
    assert splits["instances_val"].image_root == tmp_path / "images"


def test_single_coco_file_and_image_folder(tmp_path: Path) -> None:
    coco = write_coco_fixture(tmp_path / "c")
    assert list(open_dataset_dir(coco)) == ["train"]
    save_image(tmp_path / "f" / "x" / "1.png", 4, 4)
    splits = open_dataset_dir(tmp_path / "f")
    assert list(splits) == ["images"] and not splits["images"].labeled


def test_nothing_recognised(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no dataset found"):
        discover(tmp_path / "empty")
    with pytest.raises(DatasetError, match="not found"):
        discover(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DatasetError, match="not a dataset"):
        discover(tmp_path / "x.txt")


def test_load_dataset_by_kind(tmp_path: Path, manifest_dir: Path) -> None:
    coco = write_coco_fixture(tmp_path / "c")
    loaded = load_dataset("coco", coco, name="lab")
    assert len(loaded) == 3 and loaded.name == "lab"
    assert load_dataset("coco", manifest_dir, split="val", name="v").name == "v"
    with pytest.raises(DatasetError, match=r"name one with split \(have: train_labeled, train_unl"):
        load_dataset("coco", manifest_dir)
    root = write_cityscapes_fixture(tmp_path / "cs", splits=("val",))
    assert load_dataset("cityscapes", root, split="val").meta["split"] == "val"
    assert not load_dataset("folder", tmp_path / "c" / "images").labeled
    with pytest.raises(DatasetError, match="unknown dataset kind 'voc'"):
        load_dataset("voc", coco)


def test_check_clean_dataset(manifest_dir: Path) -> None:
    calls: list[tuple[int, int]] = []
    report = check_dataset(manifest_dir, progress=lambda done, total: calls.append((done, total)))
    assert report.ok and report.problems == []
    assert report.splits["train_labeled"] == {
        "images": 3, "labeled": 3, "instances": 3, "crowd": 1, "classes": 3, "problems": 0,
    }
    assert report.splits["train_unlabeled"]["labeled"] == 0
    assert calls[-1] == (4, 4)  # val shares its image with train_labeled: decoded once
    assert report.to_dict()["ok"] is True


def test_check_other_layouts(tmp_path: Path) -> None:
    assert check_dataset(write_cityscapes_fixture(tmp_path / "cs")).ok
    assert check_dataset(write_coco_fixture(tmp_path / "c")).ok
    save_image(tmp_path / "f" / "1.webp", 4, 4)
    assert check_dataset(tmp_path / "f").splits["images"]["images"] == 1


def test_check_lists_problems_across_splits(manifest_dir: Path) -> None:
    broken = manifest_dir
    (broken / "images" / "a.png").write_bytes((broken / "images" / "a.png").read_bytes()[:70])
    (broken / "images" / "extra" / "u.png").unlink()
    val = json.loads((broken / "annotations" / "val.json").read_text())
    val["annotations"][0]["category_id"] = 4
    (broken / "annotations" / "val.json").write_text(json.dumps(val))
    report = check_dataset(broken)
    assert not report.ok
    a_png = str((broken / "images" / "a.png").absolute())
    expected_starts = [
        str((broken / "images" / "extra" / "u.png").absolute()) + ": file not found",
        str(broken / "annotations" / "val.json") + ": annotation id 10 names unknown category_id 4",
        a_png + ": corrupt or truncated image",
    ]
    for start in expected_starts:
        assert sum(p.startswith(start) for p in report.problems) == 1, (start, report.problems)
    assert len(report.problems) == 3
    assert report.splits["train_unlabeled"]["problems"] == 1
    assert report.splits["train_labeled"]["problems"] == 1


def test_check_reports_undiscoverable_paths(tmp_path: Path) -> None:
    report = check_dataset(tmp_path / "nowhere")
    assert not report.ok and report.problems == [f"{tmp_path / 'nowhere'}: not found"]


def test_check_flags_an_empty_split(tmp_path: Path) -> None:
    coco = write_coco_fixture(tmp_path, data={"images": [], "annotations": [], "categories": []})
    assert check_dataset(coco).problems == [f"{coco}: split 'train' lists no images"]


def test_check_leaves_the_dataset_untouched(manifest_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(manifest_dir, copy)
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    check_dataset(copy)
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before
