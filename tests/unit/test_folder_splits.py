"""Image folders (recursive, suffix filter, deterministic order) and labeled/unlabeled splits
by seeded fraction or by split file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from sskd_deploy.data.folder import read_image_folder
from sskd_deploy.data.records import Annotation, CategorySet, Dataset, ImageRecord
from sskd_deploy.data.splits import split_by_file, split_by_fraction
from sskd_deploy.errors import ConfigError, DatasetError
from sskd_deploy.structures import masks_to_rles
from tests.unit.readers_fixtures import save_image


def test_folder_is_recursive_sorted_and_filtered(tmp_path: Path) -> None:
    save_image(tmp_path / "a.png", 5, 7)
    save_image(tmp_path / "B.JPG", 6, 8)
    save_image(tmp_path / "sub" / "c.webp", 9, 4)
    save_image(tmp_path / "sub" / "deeper" / "d.jpeg", 3, 3)
    save_image(tmp_path / ".hidden" / "x.png", 3, 3)
    save_image(tmp_path / "sub" / ".y.png", 3, 3)
    (tmp_path / "notes.txt").write_text("not an image")
    save_image(tmp_path / "old.bmp", 3, 3)
    dataset = read_image_folder(tmp_path, name="pool")
    assert [(r.file_name, r.height, r.width) for r in dataset.records] == [
        ("B.JPG", 6, 8), ("a.png", 5, 7), ("sub/c.webp", 9, 4), ("sub/deeper/d.jpeg", 3, 3),
    ]
    assert [r.image_id for r in dataset.records] == [1, 2, 3, 4]
    assert all(r.path == (tmp_path / r.file_name).absolute() for r in dataset.records)
    assert all(r.annotations is None for r in dataset.records)
    assert dataset.name == "pool" and not dataset.labeled and len(dataset.categories) == 0


def test_folder_can_carry_categories(tmp_path: Path) -> None:
    save_image(tmp_path / "a.png", 5, 7)
    classes = CategorySet(("cat",), (1,))
    assert read_image_folder(tmp_path, categories=classes).categories == classes


def test_folder_without_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match=f"^{tmp_path}: no images"):
        read_image_folder(tmp_path)
    with pytest.raises(DatasetError, match="folder not found"):
        read_image_folder(tmp_path / "missing")


def labeled_dataset(n: int = 20) -> Dataset:
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 1:3, 1:3] = True
    ann = Annotation(0, masks_to_rles(mask)[0])
    records = tuple(
        ImageRecord(i + 1, f"{'ab'[i % 2]}/img{i:03d}.png", Path(f"/data/{i}.png"), 4, 4, (ann,))
        for i in range(n)
    )
    return Dataset("toy", CategorySet(("thing",), (1,)), records, Path("/data/toy.json"), Path("/data"))


def test_fraction_split_is_deterministic_and_complete() -> None:
    dataset = labeled_dataset()
    labeled, unlabeled = split_by_fraction(dataset, 0.25, seed=3)
    again, _ = split_by_fraction(dataset, 0.25, seed=3)
    other, _ = split_by_fraction(dataset, 0.25, seed=4)
    assert len(labeled) == 5 and len(unlabeled) == 15
    assert labeled.records == again.records and labeled.records != other.records
    names = {r.file_name for r in labeled.records} | {r.file_name for r in unlabeled.records}
    assert names == {r.file_name for r in dataset.records}
    assert all(r.annotations for r in labeled.records)
    assert all(r.annotations is None for r in unlabeled.records)
    assert labeled.labeled and not unlabeled.labeled
    assert [r.image_id for r in labeled.records] == sorted(r.image_id for r in labeled.records)
    assert labeled.meta["split"] == {"fraction": 0.25, "seed": 3, "role": "labeled"}


def test_fraction_split_ignores_record_order() -> None:
    dataset = labeled_dataset()
    shuffled = dataclasses.replace(dataset, records=dataset.records[::-1])
    picked = {r.file_name for r in split_by_fraction(dataset, 0.3, seed=0)[0].records}
    assert picked == {r.file_name for r in split_by_fraction(shuffled, 0.3, seed=0)[0].records}


def test_fraction_split_keeps_at_least_one_labeled_image() -> None:
    labeled, unlabeled = split_by_fraction(labeled_dataset(10), 0.001)
    assert len(labeled) == 1 and len(unlabeled) == 9
    labeled, unlabeled = split_by_fraction(labeled_dataset(10), 1.0)
    assert len(labeled) == 10 and len(unlabeled) == 0


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, float("nan")])
def test_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(ConfigError, match="labeled_fraction"):
        split_by_fraction(labeled_dataset(), fraction)


def test_only_labeled_datasets_are_split() -> None:
    dataset = labeled_dataset()
    _, unlabeled = split_by_fraction(dataset, 0.5)
    with pytest.raises(DatasetError, match="unlabeled"):
        split_by_fraction(unlabeled, 0.5)
    with pytest.raises(DatasetError, match="no images"):
        split_by_fraction(dataset.subset([]), 0.5)


def test_split_file_matches_paths_and_unique_base_names(tmp_path: Path) -> None:
    split = tmp_path / "labeled.txt"
    split.write_text("# labeled images\n\na/img000.png\n  img003.png  \n./b/img005.png\n")
    labeled, unlabeled = split_by_file(labeled_dataset(), split)
    assert [r.file_name for r in labeled.records] == ["a/img000.png", "b/img003.png", "b/img005.png"]
    assert len(unlabeled) == 17 and all(r.annotations is None for r in unlabeled.records)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a/img000.png\nnope.png\n", r"line 2: 'nope.png' matches no image of dataset 'toy'"),
        ("# only a comment\n\n", "lists no image file names"),
        ("a/img000.png\n# c\na/img000.png\n", "line 3: 'a/img000.png' names the same image as line 1"),
    ],
)
def test_split_file_errors_name_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    split = tmp_path / "labeled.txt"
    split.write_text(text)
    with pytest.raises(DatasetError, match=f"^{split}: {message}"):
        split_by_file(labeled_dataset(), split)


def test_split_file_ambiguous_base_name(tmp_path: Path) -> None:
    records = labeled_dataset(2).records
    twins = [dataclasses.replace(r, file_name=f"{d}/same.png") for r, d in zip(records, "xy")]
    dataset = dataclasses.replace(labeled_dataset(2), records=tuple(twins))
    split = tmp_path / "s.txt"
    split.write_text("same.png\n")
    with pytest.raises(DatasetError, match=r"line 1: 'same.png' matches 2 images \(x/same.png, y/same.png\)"):
        split_by_file(dataset, split)
    split.write_text("y/same.png\n")
    assert [r.file_name for r in split_by_file(dataset, split)[0].records] == ["y/same.png"]


def test_missing_split_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="labeled.txt: file not found"):
        split_by_file(labeled_dataset(), tmp_path / "labeled.txt")
