"""The synthetic world: determinism, COCO validity, occlusion-correct masks, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from sskd_deploy.data import synth
from sskd_deploy.data.image_io import read_image
from sskd_deploy.data.synth import SYNTH_CLASSES, generate_synthetic, labeled_subset, render_image
from sskd_deploy.data.synth_scene import MIN_VISIBLE_PX

# pycocotools' decoder trips a numpy 2 deprecation warning; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SMALL = dict(num_train=6, num_val=3, labeled_fraction=0.5, image_size=(96, 128))
LABELED_FILES = ("train", "train_labeled", "val")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root: Path, name: str) -> dict:
    return json.loads((root / "annotations" / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "world"
    generate_synthetic(out, seed=3, **SMALL)
    return out


def test_layout(world: Path) -> None:
    files = set(_files(world))
    expected = {"dataset.json"} | {f"annotations/{n}.json" for n in (*LABELED_FILES, "train_unlabeled")}
    expected |= {f"images/train/{i:06d}.png" for i in range(6)}
    expected |= {f"images/val/{i:06d}.png" for i in range(3)}
    assert files == expected
    assert not world.with_name("world.partial").exists()


def test_same_seed_is_byte_identical_other_seed_differs(world: Path, tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "again", seed=3, **SMALL)
    generate_synthetic(tmp_path / "other", seed=4, **SMALL)
    reference, again, other = _files(world), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert again == reference
    assert other.keys() == reference.keys()
    images = [k for k in reference if k.endswith(".png")]
    assert all(other[k] != reference[k] for k in images)
    assert other["annotations/train.json"] != reference["annotations/train.json"]


def test_images_are_independent_of_each_other(world: Path) -> None:
    # image 4 of train re-rendered alone equals the one written amid the full run
    image, instances = render_image(3, 0, 4, (96, 128))
    np.testing.assert_array_equal(image, read_image(world / "images/train/000004.png"))
    assert len(instances) == sum(a["image_id"] == 5 for a in _load(world, "train")["annotations"])


def test_coco_files_load_and_masks_match_images(world: Path) -> None:
    for name in LABELED_FILES:
        coco = COCO(str(world / "annotations" / f"{name}.json"))
        assert [(c["id"], c["name"], c["supercategory"]) for c in coco.loadCats(coco.getCatIds())] == [
            (i + 1, n, "shape") for i, n in enumerate(SYNTH_CLASSES)
        ]
        for ann in coco.loadAnns(coco.getAnnIds()):
            info = coco.imgs[ann["image_id"]]
            mask = coco.annToMask(ann)
            assert mask.shape == (info["height"], info["width"]) == (96, 128)
            assert ann["area"] == int(mask.sum()) >= MIN_VISIBLE_PX
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert isinstance(ann["segmentation"]["counts"], str) and ann["iscrowd"] == 0
        for info in coco.imgs.values():
            assert read_image(world / "images" / info["file_name"]).shape == (96, 128, 3)


def test_image_ids_are_stable_and_unique(world: Path) -> None:
    train, val = _load(world, "train"), _load(world, "val")
    assert [(i["id"], i["file_name"]) for i in train["images"]] == [
        (i + 1, f"train/{i:06d}.png") for i in range(6)
    ]
    assert [(i["id"], i["file_name"]) for i in val["images"]] == [
        (7 + i, f"val/{i:06d}.png") for i in range(3)
    ]
    ann_ids = [a["id"] for a in train["annotations"] + val["annotations"]]
    assert len(ann_ids) == len(set(ann_ids))


def test_visible_masks_never_overlap(world: Path) -> None:
    coco = COCO(str(world / "annotations" / "train.json"))
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        if anns:
            assert np.stack([coco.annToMask(a) for a in anns]).sum(0).max() == 1


def test_labeled_and_unlabeled_partition_train(world: Path) -> None:
    train, labeled, unlabeled = (_load(world, n) for n in ("train", "train_labeled", "train_unlabeled"))
    assert set(unlabeled) == {"images", "categories"}
    labeled_ids = {i["id"] for i in labeled["images"]}
    unlabeled_ids = {i["id"] for i in unlabeled["images"]}
    assert len(labeled_ids) == round(0.5 * 6) and not labeled_ids & unlabeled_ids
    assert labeled_ids | unlabeled_ids == {i["id"] for i in train["images"]}
    assert labeled["annotations"] == [a for a in train["annotations"] if a["image_id"] in labeled_ids]


@pytest.mark.parametrize(
    ("num_train", "fraction", "expected"),
    [(400, 0.1, 40), (6, 0.5, 3), (7, 0.1, 1), (4, 0.1, 1), (5, 1.0, 5)],
)
def test_labeled_subset_size_and_determinism(num_train: int, fraction: float, expected: int) -> None:
    chosen = labeled_subset(0, num_train, fraction)
    assert len(chosen) == expected == len(set(chosen)) and chosen == sorted(chosen)
    assert all(0 <= i < num_train for i in chosen) and chosen == labeled_subset(0, num_train, fraction)


def test_every_class_appears_with_varied_sizes() -> None:
    labels, areas, counts = [], [], []
    for index in range(30):
        image, instances = render_image(0, 0, index, (192, 256))
        assert image.shape == (192, 256, 3) and image.dtype == np.uint8
        labels += instances.labels.tolist()
        areas += instances.masks.sum(axis=(1, 2)).tolist()
        counts.append(len(instances))
    assert set(labels) == set(range(len(SYNTH_CLASSES)))
    assert min(areas) < 150 and max(areas) > 2000
    assert max(counts) >= 5 and np.mean(counts) >= 3


def test_manifest(world: Path) -> None:
    manifest = json.loads((world / "dataset.json").read_text())
    assert manifest["generator"] == {
        "name": "synth-shapes", "version": 1, "seed": 3, "num_train": 6, "num_val": 3,
        "labeled_fraction": 0.5, "image_size": [96, 128],
    }
    assert manifest["classes"] == list(SYNTH_CLASSES)
    for split, entry in manifest["splits"].items():
        assert entry == {"format": "coco", "annotations": f"annotations/{split}.json", "images": "images"}
    assert manifest["default_splits"]["all_labels"] == "train"
    for split in LABELED_FILES:
        stats = manifest["statistics"][split]
        coco = _load(world, split)
        assert (stats["images"], stats["instances"]) == (len(coco["images"]), len(coco["annotations"]))
    for text in (p.read_text() for p in world.rglob("*.json")):
        assert str(world.parent) not in text


def test_progress_is_reported_per_image(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    tiny = {**SMALL, "num_train": 2, "num_val": 1}
    generate_synthetic(tmp_path / "w", **tiny, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize(
    "bad",
    [
        {"num_train": 0}, {"num_val": 0}, {"labeled_fraction": 0.0}, {"labeled_fraction": 1.5},
        {"image_size": (63, 128)}, {"image_size": (96,)}, {"seed": -1}, {"seed": 2**32}, {"num_train": 2.5},
    ],
)
def test_bad_arguments_raise_before_writing(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        generate_synthetic(tmp_path / "w", **{**SMALL, **bad})
    assert not any(tmp_path.iterdir())


def _failing_after(count: int):
    calls = []

    def render(*args, **kwargs):
        calls.append(1)
        if len(calls) > count:
            raise RuntimeError("boom")
        return render_image(*args, **kwargs)

    return render


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synth, "render_image", _failing_after(2))
    with pytest.raises(RuntimeError, match="boom"):
        generate_synthetic(tmp_path / "w", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_semantics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "w"
    out.mkdir()
    (out / "marker").write_text("old")
    with pytest.raises(FileExistsError):
        generate_synthetic(out, **SMALL)
    assert (out / "marker").read_text() == "old"
    with monkeypatch.context() as patch:  # a failed overwrite keeps the previous output
        patch.setattr(synth, "render_image", _failing_after(1))
        with pytest.raises(RuntimeError):
            generate_synthetic(out, overwrite=True, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"] and (out / "marker").exists()
    generate_synthetic(out, overwrite=True, **SMALL)
    assert not (out / "marker").exists() and (out / "dataset.json").is_file()
