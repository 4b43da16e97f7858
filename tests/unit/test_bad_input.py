"""Every kind of bad input the readers must refuse: one DatasetError naming the file and the
problem from strict reading, every problem listed by check_dataset, and nothing written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sskd_deploy.data.check import check_dataset
from sskd_deploy.data.cityscapes import read_cityscapes
from sskd_deploy.data.coco import read_coco, write_coco
from sskd_deploy.data.folder import read_image_folder
from sskd_deploy.data.image_io import read_image
from sskd_deploy.errors import DatasetError, InputError
from tests.unit.readers_fixtures import coco_fixture_json, write_coco_fixture

Edit = Callable[[dict], None]


def _set(path: str, value) -> Edit:
    """An edit that sets ``data[a][i][b] = value`` for ``path == "a.i.b"``."""

    def edit(data: dict) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        target = data
        for key in parents:
            target = target[key]
        target[last] = value

    return edit


CASES: list[tuple[str, Edit, str]] = [
    ("unknown image", _set("annotations.0.image_id", 999), "annotation id 10 names unknown image_id 999"),
    ("unknown category", _set("annotations.1.category_id", 8),
     "annotation id 11 names unknown category_id 8"),
    ("escaping file name", _set("images.0.file_name", "../../etc/passwd"),
     r"image id 5 file_name '../../etc/passwd' escapes the dataset root .*images"),
    ("absolute file name", _set("images.0.file_name", "/etc/passwd"),
     r"image id 5 file_name '/etc/passwd' is an absolute path \(image root .*images\)"),
    ("polygon outside", _set("annotations.0.segmentation", [[2, 1, 40, 1, 40, 4, 2, 4]]),
     r"annotation id 10 \(image id 5\): polygon 0 has points outside the image \(width 30, height 20\)"),
    ("short polygon", _set("annotations.0.segmentation", [[2, 1, 6, 1]]),
     "polygon 0 has 4 coordinates, expected an even number >= 6"),
    ("bbox outside", _set("annotations.0.bbox", [25, 1, 10, 3]),
     r"bbox \[25, 1, 10, 3\] lies outside the image"),
    ("RLE size", _set("annotations.1.segmentation.size", [21, 30]),
     r"RLE size \[21, 30\] differs from the image's \[height, width\] \[20, 30\]"),
    ("RLE runs", _set("annotations.2.segmentation.counts", [0, 5, 5]),
     "RLE runs cover 10 pixels but the image has 384"),
    ("RLE string", _set("annotations.1.segmentation.counts", "0a}"), "not a valid COCO RLE string"),
    ("RLE cut off", _set("annotations.1.segmentation.counts", "0P"), "not a valid COCO RLE string"),
    ("empty mask", _set("annotations.0.segmentation", [[2, 1, 2.2, 1, 2.2, 1.2, 2, 1.2]]), "empty mask"),
    ("duplicate annotation", _set("annotations.1.id", 10), "annotation id 10 is listed twice"),
    ("duplicate image", _set("images.1.id", 5), "image id 5 is listed twice"),
    ("duplicate category", _set("categories.1.id", 90), "category id 90 is listed twice"),
    ("bad size", _set("images.0.height", 0),
     "image id 5 has height 0 / width 30, expected positive integers"),
    ("NaN bbox", _set("annotations.0.bbox", [float("nan"), 1, 4, 3]),
     "is not \\[x, y, width, height\\] of finite"),
    ("bad iscrowd", _set("annotations.0.iscrowd", 2), "iscrowd is 2, expected 0 or 1"),
    ("no images key", lambda d: d.pop("images"), "top-level 'images' must be a list, found missing"),
    ("no categories", lambda d: d.pop("categories"), "top-level 'categories' must be a list, found missing"),
]

EDITS = {name: edit for name, edit, _ in CASES}


@pytest.mark.parametrize(("edit", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_strict_reader_names_file_and_problem(
    tmp_path: Path, edit: Edit, message: str, request: pytest.FixtureRequest
) -> None:
    data = coco_fixture_json()
    edit(data)
    path = write_coco_fixture(tmp_path, data)
    with pytest.raises(DatasetError, match=message) as err:
        read_coco(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    problems = check_dataset(path).problems
    assert problems[0] == str(err.value)  # the same rule, listed by check
    # a dropped duplicate leaves the ids it replaced undefined: their annotations are reported too
    follow_ups = {"duplicate image": "unknown image_id 2", "duplicate category": "unknown category_id 3"}
    assert all(follow_ups.get(request.node.callspec.id, "-") in p for p in problems[1:])
    assert len(problems) == (3 if request.node.callspec.id in follow_ups else 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{\n "images": [\n  {"id": 1}\n  {"id": 2}\n ]\n}',
         "malformed JSON at line 4 column 3: Expecting ',' delimiter"),
        ("[1, 2]", "top level must be a JSON object, found a list"),
        ("", "malformed JSON at line 1 column 1"),
    ],
)
def test_malformed_json(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "annotations" / "val.json"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(DatasetError, match=f"^{path}: {message}"):
        read_coco(path)
    assert check_dataset(path).problems[0].startswith(f"{path}: {message}")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_bytes(b'{"images": "\xff"}')
    with pytest.raises(DatasetError, match="cannot read as UTF-8"):
        read_coco(path)


def test_missing_annotation_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="val.json: file not found"):
        read_coco(tmp_path / "val.json")


def test_missing_image_names_the_image(tmp_path: Path) -> None:
    path = write_coco_fixture(tmp_path)
    (tmp_path / "images" / "c.webp").unlink()
    with pytest.raises(DatasetError) as err:
        read_coco(path)
    image = (tmp_path / "images" / "c.webp").absolute()
    assert str(err.value) == f"{image}: file not found (image id 9 of {path})"


def test_non_image_file(tmp_path: Path) -> None:
    path = write_coco_fixture(tmp_path)
    fake = tmp_path / "images" / "sub" / "b.jpg"
    fake.write_text("this is not a JPEG")
    read_coco(path)  # headers are only read on request
    with pytest.raises(DatasetError, match=f"^{fake.absolute()}: not a readable image"):
        read_coco(path, check_images=True)
    with pytest.raises(DatasetError, match=f"^{fake}: not a readable image"):
        read_image_folder(tmp_path / "images")
    assert any(p.startswith(f"{fake.absolute()}: not an image") for p in check_dataset(path).problems)


def test_truncated_image(tmp_path: Path) -> None:
    path = write_coco_fixture(tmp_path)
    image = tmp_path / "images" / "a.png"
    image.write_bytes(image.read_bytes()[:80])  # the header survives, the pixels do not
    assert len(read_coco(path, check_images=True)) == 3
    with pytest.raises(InputError, match=f"^{image}: corrupt or truncated image"):
        read_image(image)
    problems = check_dataset(path).problems
    assert len(problems) == 1 and problems[0].startswith(f"{image.absolute()}: corrupt or truncated image")


def test_header_size_differs_from_json(tmp_path: Path) -> None:
    data = coco_fixture_json()
    data["images"][2]["width"] = 11
    path = write_coco_fixture(tmp_path, data)
    image = (tmp_path / "images" / "c.webp").absolute()
    with pytest.raises(DatasetError, match=rf"^{image}: image is 8x10 \(HxW\) but {path} says 8x11"):
        read_coco(path, check_images=True)
    assert check_dataset(path).problems == [f"{image}: decoded image is 8x10 (HxW) but {path} says 8x11"]


def test_check_lists_every_problem_of_a_file(tmp_path: Path) -> None:
    data = coco_fixture_json()
    for case in ("unknown image", "unknown category", "escaping file name", "bbox outside", "RLE size"):
        EDITS[case](data)
    data["annotations"].append({"id": 99, "image_id": 9, "category_id": 3, "segmentation": "oops"})
    path = write_coco_fixture(tmp_path, data)
    problems = check_dataset(path).problems
    # image 5 is skipped for its file name, so its annotations 10 and 11 are not reported again
    assert problems == [
        f"{path}: image id 5 file_name '../../etc/passwd' escapes the dataset root "
        f"(image root {tmp_path / 'images'})",
        f"{path}: annotation id 10 names unknown image_id 999",
        f"{path}: annotation id 99 (image id 9): segmentation must be a polygon list or an RLE object, "
        "found a str",
    ]


def test_problems_in_later_entries_are_all_found(tmp_path: Path) -> None:
    data = coco_fixture_json()
    for case in ("polygon outside", "RLE size", "RLE runs"):
        EDITS[case](data)
    data["annotations"][3]["iscrowd"] = "yes"
    path = write_coco_fixture(tmp_path, data)
    problems = check_dataset(path).problems
    assert len(problems) == 4 and all(p.startswith(f"{path}: ") for p in problems)
    assert problems[3].endswith("annotation id 13 (image id 2): iscrowd is 'yes', expected 0 or 1")
    with pytest.raises(DatasetError, match="annotation id 10 .* polygon 0 has points outside"):
        read_coco(path)  # strict reading stops at the first


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    path = write_coco_fixture(tmp_path)
    dataset = read_coco(path)
    mixed = dataset.subset([0, 1])
    import dataclasses

    records = (mixed.records[0], dataclasses.replace(mixed.records[1], annotations=None))
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="mixes labeled and unlabeled images"):
        write_coco(dataclasses.replace(mixed, records=records), out / "mixed.json")
    assert not out.exists() or list(out.iterdir()) == []


def test_cityscapes_problems_are_all_listed(tmp_path: Path) -> None:
    from tests.unit.readers_fixtures import write_cityscapes_fixture

    root = write_cityscapes_fixture(tmp_path / "cs")
    gt_dir, image_dir = root / "gtFine" / "train", root / "leftImg8bit" / "train"
    (gt_dir / "aachen" / "aachen_000000_000019_gtFine_instanceIds.png").write_bytes(b"GIF89a broken")
    (gt_dir / "bonn" / "bonn_000001_000019_gtFine_instanceIds.png").unlink()
    orphan = gt_dir / "bonn" / "bonn_000002_000019_gtFine_instanceIds.png"
    orphan.write_bytes(b"")
    with pytest.raises(DatasetError, match="ground truth without an image"):
        read_cityscapes(root)
    problems = check_dataset(root).problems
    assert [p.split(": ", 1)[1].split(" (")[0] for p in problems] == [
        "ground truth without an image", "not an image", "file not found",
    ]
    assert "bonn_000001_000019_gtFine_instanceIds.png: file not found (ground truth of" in problems[2]
    assert str(image_dir) in problems[2]


def test_folder_problems_are_all_listed(tmp_path: Path) -> None:
    from tests.unit.readers_fixtures import save_image

    save_image(tmp_path / "good.png", 4, 4)
    (tmp_path / "text.jpg").write_text("hello")
    cut = save_image(tmp_path / "cut.png", 30, 30)
    cut.write_bytes(cut.read_bytes()[:100])
    report = check_dataset(tmp_path)
    # header problems are found while reading, truncation when every image is decoded afterwards
    text, cut = (tmp_path / "text.jpg").absolute(), cut.absolute()
    assert [p.split(": ")[0] for p in report.problems] == [str(text), str(cut)]
    assert report.splits["images"]["images"] == 2  # good.png and the truncated file, whose header is intact
