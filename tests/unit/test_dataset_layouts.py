"""Dataset layouts as users bring them, read right or refused with what to do: COCO with
``annotations/``, one COCO JSON at the top, Roboflow's per-split export, Cityscapes, a plain image
folder and YOLO labels; ambiguity; and every bad input reached through the directory form."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from sskd_deploy.cli import main
from sskd_deploy.data.check import check_dataset
from sskd_deploy.data.layout import discover, load_dataset, open_dataset_dir
from sskd_deploy.errors import DatasetError
from tests.unit.readers_fixtures import (
    save_image,
    write_cityscapes_fixture,
    write_coco_fixture,
    write_roboflow_fixture,
    write_top_level_coco_fixture,
    write_yolo_fixture,
)


def _reading(path: Path) -> str:
    report = check_dataset(path)
    assert report.ok, report.problems
    return report.reading


def test_annotations_folder_with_images_folder(tmp_path: Path) -> None:
    write_coco_fixture(tmp_path, name="instances_train.json")
    assert _reading(tmp_path) == "COCO: annotations/instances_train.json with images in images/, 3 images, 3 classes"
    (source,) = discover(tmp_path).sources
    assert source.images == tmp_path / "images"


def test_coco_2017_layout_finds_the_split_folder(tmp_path: Path) -> None:
    write_coco_fixture(tmp_path, name="instances_val2017.json")
    (tmp_path / "images").rename(tmp_path / "val2017")
    splits = open_dataset_dir(tmp_path)
    assert list(splits) == ["instances_val2017"] and splits["instances_val2017"].image_root == tmp_path / "val2017"


def test_one_json_at_the_top_with_images_in_sub_folders(tmp_path: Path) -> None:
    write_top_level_coco_fixture(tmp_path)
    assert _reading(tmp_path) == "COCO: annotations.json, 3 images, 3 classes"
    report = check_dataset(tmp_path)
    assert report.splits["annotations"] == {
        "images": 3, "labeled": 3, "instances": 3, "crowd": 1, "classes": 3, "problems": 0,
    }


def test_a_top_level_json_with_a_plain_name_is_read_by_its_keys(tmp_path: Path) -> None:
    write_top_level_coco_fixture(tmp_path, name="data.json")
    (tmp_path / "meta.json").write_text('{"source": "camera 3"}')  # not COCO: left alone
    assert _reading(tmp_path) == "COCO: data.json, 3 images, 3 classes"


def test_roboflow_export(tmp_path: Path) -> None:
    write_roboflow_fixture(tmp_path)
    assert _reading(tmp_path) == (
        "COCO: train/_annotations.coco.json (3 images), valid/_annotations.coco.json (1 image), "
        "test/_annotations.coco.json (1 image); 3 classes"
    )
    splits = open_dataset_dir(tmp_path)
    assert list(splits) == ["train", "valid", "test"]
    # the dataset's own name (Roboflow's category 0, the supercategory of the rest) is not a class
    assert splits["train"].categories.names == ("car", "truck", "zebra")
    assert splits["valid"].image_root == tmp_path / "valid"


def test_cityscapes(tmp_path: Path) -> None:
    write_cityscapes_fixture(tmp_path, splits=("train", "val"))
    assert _reading(tmp_path) == "Cityscapes: train (2 images), val (2 images); 8 classes"


def test_plain_image_folder(tmp_path: Path) -> None:
    save_image(tmp_path / "x" / "1.png", 4, 4)
    save_image(tmp_path / "2.jpg", 6, 4)
    assert _reading(tmp_path) == "image folder (no annotation file found): 2 images, unlabeled"


@pytest.mark.parametrize("nested", [False, True], ids=["labels", "split/labels"])
def test_yolo_labels_are_refused_with_a_conversion_route(tmp_path: Path, nested: bool) -> None:
    root = write_yolo_fixture(tmp_path / "train" if nested else tmp_path)
    labels = root / "labels"
    if nested:  # Roboflow's YOLO export: train/images, train/labels
        labels = tmp_path / "train" / "labels"
    with pytest.raises(DatasetError, match="^.*labels: YOLO format is not supported; convert with the "
                                           r"supervision package .*DetectionDataset\.from_yolo") as err:
        discover(tmp_path)
    assert err.value.path == str(labels)
    assert check_dataset(tmp_path).problems == [str(err.value)]


def test_two_files_for_one_split_are_ambiguous(tmp_path: Path) -> None:
    write_roboflow_fixture(tmp_path)
    (tmp_path / "train" / "instances.json").write_text((tmp_path / "train" / "_annotations.coco.json").read_text())
    with pytest.raises(DatasetError, match=r"ambiguous: 2 candidate annotation files for split 'train' "
                                           r"\(train/_annotations.coco.json, train/instances.json\); pass the one "
                                           r"you mean .* or name it in the config") as err:
        discover(tmp_path)
    assert "\n" not in str(err.value)


def test_annotation_files_in_two_places_are_ambiguous(tmp_path: Path) -> None:
    write_coco_fixture(tmp_path)
    (tmp_path / "annotations.json").write_text((tmp_path / "annotations" / "train.json").read_text())
    with pytest.raises(DatasetError, match=r"ambiguous: annotation files in more than one place "
                                           r"\(annotations/train.json, annotations.json\)"):
        open_dataset_dir(tmp_path)


def test_an_annotation_file_deeper_down_is_not_ignored(tmp_path: Path) -> None:
    write_roboflow_fixture(tmp_path / "export" / "v2")
    with pytest.raises(DatasetError, match=r"holds annotation files below its sub-folders "
                                           r"\(export/v2/test/_annotations.coco.json, "):
        discover(tmp_path)


def test_a_broken_json_is_an_error_not_an_image_folder(tmp_path: Path) -> None:
    path = write_top_level_coco_fixture(tmp_path, name="data.json")
    path.write_text(path.read_text()[:200])  # cut: neither the name nor the keys can be read
    problems = check_dataset(tmp_path).problems
    assert len(problems) == 1 and problems[0].startswith(f"{path}: malformed JSON at line")


def test_kind_coco_on_an_image_folder_is_refused(tmp_path: Path) -> None:
    save_image(tmp_path / "1.png", 4, 4)
    with pytest.raises(DatasetError, match="kind coco, but this folder holds images and no COCO annotation file"):
        load_dataset("coco", tmp_path)


def test_loading_says_how_the_data_was_read(tmp_path: Path) -> None:
    write_top_level_coco_fixture(tmp_path)
    lines: list[str] = []
    load_dataset("coco", tmp_path, log=lines.append)
    load_dataset("folder", tmp_path / "images", log=lines.append)
    assert lines == [f"{tmp_path} read as COCO: annotations.json, 3 images, 3 classes",
                     f"{tmp_path / 'images'} read as image folder (no annotation file found): 3 images, unlabeled"]


def test_data_commands_print_the_reading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_roboflow_fixture(tmp_path / "rf")
    assert main(["data", "check", str(tmp_path / "rf")]) == 0
    assert f"{tmp_path / 'rf'} read as COCO: train/_annotations.coco.json (3 images)" in capsys.readouterr().out
    out = tmp_path / "show.png"
    assert main(["data", "show", str(tmp_path / "rf"), "--out", str(out), "--split", "train", "--num", "1"]) == 0
    assert "read as COCO: train/" in capsys.readouterr().out and out.is_file()


Edit = Callable[[Path], Path]


def _edit_json(change: Callable[[dict], None]) -> Edit:
    def edit(root: Path) -> Path:
        path = root / "annotations.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
        return path

    return edit


def _missing_image(root: Path) -> Path:
    (root / "images" / "c.webp").unlink()
    return (root / "images" / "c.webp").absolute()


def _truncated_json(root: Path) -> Path:
    path = root / "annotations.json"
    path.write_text(path.read_text()[:300])
    return path


def _corrupt_image(root: Path) -> Path:
    image = root / "images" / "a.png"
    image.write_bytes(image.read_bytes()[:80])  # the header survives, the pixels do not
    return image.absolute()


BAD_INPUTS: list[tuple[str, Edit, str]] = [
    ("missing image", _missing_image, r"file not found \(image id 9 of .*annotations.json\)"),
    ("truncated JSON", _truncated_json, "malformed JSON at line"),
    ("unknown category", _edit_json(lambda d: d["annotations"][1].update(category_id=8)),
     "annotation id 11 names unknown category_id 8"),
    ("root escape", _edit_json(lambda d: d["images"][0].update(file_name="../../etc/passwd")),
     "image id 5 file_name '../../etc/passwd' escapes the dataset root"),
    ("unknown image", _edit_json(lambda d: d["annotations"][0].update(image_id=999)),
     "annotation id 10 names unknown image_id 999"),
    ("corrupt image", _corrupt_image, "corrupt or truncated image"),
]


@pytest.mark.parametrize(("edit", "message"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_through_the_directory_form(
    tmp_path: Path, edit: Edit, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    write_top_level_coco_fixture(root)
    named = edit(root)
    assert main(["data", "check", str(root)]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"problem: {named}: ")
    assert re.search(message, problems[0]), problems[0]
