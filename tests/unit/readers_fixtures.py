"""Small datasets in each native format, written by hand for the reader tests.

Every mask is drawn here as a boolean array first, so the tests can compare what a reader decodes
with what was drawn, pixel for pixel, without trusting the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def save_image(path: Path, height: int, width: int, seed: int = 0) -> Path:
    """Random RGB image; the format follows the suffix (png, jpg, webp)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def box_mask(height: int, width: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE counts: column-major runs, starting with a (possibly empty) run of zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def compressed_counts(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")


# The drawn ground truth of write_coco_fixture: file name -> [(contiguous class, iscrowd, mask)].
A_H, A_W, B_H, B_W = 20, 30, 16, 24
EXPECTED_COCO = {
    "a.png": [
        (0, False, box_mask(A_H, A_W, 1, 4, 2, 6)),  # polygon, category id 3
        (1, False, box_mask(A_H, A_W, 10, 15, 5, 12)),  # compressed RLE, category id 7
    ],
    "sub/b.jpg": [
        (2, True, box_mask(B_H, B_W, 3, 9, 0, 24)),  # uncompressed RLE crowd, category id 90
        (0, False, box_mask(B_H, B_W, 10, 12, 1, 3) | box_mask(B_H, B_W, 12, 16, 20, 24)),  # two polygons
    ],
    "c.webp": [],
}


def coco_fixture_json() -> dict:
    """A COCO file using polygons, both RLE forms, a crowd region and sparse category ids."""
    crowd = EXPECTED_COCO["sub/b.jpg"][0][2]
    return {
        "info": {"description": "reader test"},
        "categories": [{"id": 90, "name": "zebra"}, {"id": 3, "name": "car"}, {"id": 7, "name": "truck"}],
        "images": [
            {"id": 5, "file_name": "a.png", "height": A_H, "width": A_W},
            {"id": 2, "file_name": "sub/b.jpg", "height": B_H, "width": B_W},
            {"id": 9, "file_name": "c.webp", "height": 8, "width": 10},
        ],
        "annotations": [
            {"id": 10, "image_id": 5, "category_id": 3, "segmentation": [[2, 1, 6, 1, 6, 4, 2, 4]],
             "bbox": [2, 1, 4, 3], "iscrowd": 0},
            {"id": 11, "image_id": 5, "category_id": 7, "iscrowd": 0,
             "segmentation": {"size": [A_H, A_W], "counts": compressed_counts(EXPECTED_COCO["a.png"][1][2])}},
            {"id": 12, "image_id": 2, "category_id": 90, "iscrowd": 1,
             "segmentation": {"size": [B_H, B_W], "counts": uncompressed_counts(crowd)}},
            {"id": 13, "image_id": 2, "category_id": 3, "iscrowd": 0,
             "segmentation": [[1, 10, 3, 10, 3, 12, 1, 12], [20, 12, 24, 12, 24, 16, 20, 16]]},
        ],
    }


def write_coco_fixture(root: Path, data: dict | None = None, name: str = "train.json") -> Path:
    """``root/images/{a.png, sub/b.jpg, c.webp}`` and ``root/annotations/<name>``; returns the JSON path."""
    save_image(root / "images" / "a.png", A_H, A_W, seed=1)
    save_image(root / "images" / "sub" / "b.jpg", B_H, B_W, seed=2)
    save_image(root / "images" / "c.webp", 8, 10, seed=3)
    path = root / "annotations" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco_fixture_json() if data is None else data, indent=1))
    return path


def write_manifest_fixture(root: Path) -> Path:
    """A directory in the synthetic generator's layout: manifest, labeled / unlabeled / val COCO files."""
    labeled = write_coco_fixture(root, name="train_labeled.json")
    full = json.loads(labeled.read_text())
    unlabeled = {"images": [{"id": 1, "file_name": "extra/u.png", "height": 12, "width": 14}]}
    save_image(root / "images" / "extra" / "u.png", 12, 14, seed=4)
    (root / "annotations" / "train_unlabeled.json").write_text(json.dumps(unlabeled))
    val = {**full, "images": full["images"][:1], "annotations": full["annotations"][:2]}
    (root / "annotations" / "val.json").write_text(json.dumps(val))
    splits = {
        name: {"format": "coco", "annotations": f"annotations/{name}.json", "images": "images"}
        for name in ("train_labeled", "train_unlabeled", "val")
    }
    manifest = {
        "format": "sskd-deploy/dataset", "version": 1, "name": "fixture",
        "classes": ["car", "truck", "zebra"], "splits": splits,
        "default_splits": {"labeled": "train_labeled", "unlabeled": "train_unlabeled", "val": "val"},
    }
    (root / "dataset.json").write_text(json.dumps(manifest, indent=1))
    return root


CITY_H, CITY_W = 12, 16


def cityscapes_ids() -> np.ndarray:
    """Instance ids of the first frame: two cars, a person instance, a crowd of people, road, a caravan."""
    ids = np.full((CITY_H, CITY_W), 7, np.uint16)  # road (stuff): ignored
    ids[0:2, :] = 0  # unlabeled
    ids[2:5, 1:4] = 26001
    ids[2:5, 5:9] = 26002
    ids[6:10, 0:3] = 24000  # person, instance index 0
    ids[6:12, 10:16] = 24  # people not separated: a crowd region
    ids[10:12, 4:8] = 29001  # caravan: not among the 8 benchmark classes
    return ids


def write_cityscapes_fixture(root: Path, splits: tuple[str, ...] = ("train",)) -> Path:
    """``root/{leftImg8bit,gtFine}/<split>/<city>/...`` with two frames per split."""
    for split in splits:
        for city, stem, ids in (
            ("aachen", "aachen_000000_000019", cityscapes_ids()),
            ("bonn", "bonn_000001_000019", np.where(cityscapes_ids() == 26002, 33000, 7).astype(np.uint16)),
        ):
            save_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", CITY_H, CITY_W)
            gt = root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png"
            gt.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ids).save(gt)
    return root


def _moved(data: dict, prefix: str) -> dict:
    """``data`` with every image file name below ``prefix/``."""
    images = [{**img, "file_name": f"{prefix}/{img['file_name']}"} for img in data["images"]]
    return {**data, "images": images}


def write_top_level_coco_fixture(root: Path, name: str = "annotations.json") -> Path:
    """One COCO file at the top, images in sub-folders named relative to it (``images/a.png``, ...)."""
    write_coco_fixture(root)
    (root / "annotations" / "train.json").unlink()
    (root / "annotations").rmdir()
    path = root / name
    path.write_text(json.dumps(_moved(coco_fixture_json(), "images"), indent=1))
    return path


def write_roboflow_fixture(root: Path) -> Path:
    """Roboflow's COCO export: ``train/``, ``valid/``, ``test/``, each with ``_annotations.coco.json``
    beside its images (train: the three images of the reader fixture; valid and test: one each).

    As Roboflow does, the categories start with the dataset's own name (id 0, supercategory "none"),
    the supercategory of every real class."""
    full = coco_fixture_json()
    umbrella = {"id": 0, "name": "shapes", "supercategory": "none"}
    full["categories"] = [umbrella, *({**c, "supercategory": "shapes"} for c in full["categories"])]
    for split, keep in (("train", (5, 2, 9)), ("valid", (5,)), ("test", (9,))):
        images = [img for img in full["images"] if img["id"] in keep]
        anns = [a for a in full["annotations"] if a["image_id"] in keep]
        for img in images:
            size = (img["height"], img["width"])
            save_image(root / split / img["file_name"], *size, seed=img["id"])
        data = {**full, "images": images, "annotations": anns}
        (root / split / "_annotations.coco.json").write_text(json.dumps(data, indent=1))
    (root / "README.roboflow.txt").write_text("exported from a test\n")
    return root


def write_yolo_fixture(root: Path) -> Path:
    """Images plus a YOLO-seg ``labels/`` folder (one polygon per line, normalised coordinates)."""
    save_image(root / "images" / "train" / "a.png", A_H, A_W, seed=1)
    label = root / "labels" / "train" / "a.txt"
    label.parent.mkdir(parents=True, exist_ok=True)
    label.write_text("0 0.1 0.1 0.5 0.1 0.5 0.4 0.1 0.4\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames:\n  0: car\n")
    return root
