"""The synthetic instance-segmentation world on disk: the project's embedded default dataset.

Layout written under ``out_dir`` (the dataset-directory reader relies on it exactly)::

    dataset.json                      manifest: generator parameters, classes, splits, statistics
    images/{train,val}/000000.png     every image; train holds the labeled and unlabeled images
    annotations/train.json            COCO instances of ALL train images (for "all labels" runs and
                                      for scoring pseudo-labels; not the labeled split)
    annotations/train_labeled.json    COCO instances of the labeled subset
    annotations/train_unlabeled.json  images and categories only, no "annotations" key
    annotations/val.json              COCO instances of val

Each image has its own random stream, ``SeedSequence([seed, split_index, image_index])``, so images
are independent of one another and every file is byte-identical for the same arguments; files hold
no timestamps or absolute paths.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from sskd_deploy.data.image_io import encode_png
from sskd_deploy.data.records import Annotation, CategorySet, Dataset, ImageRecord
from sskd_deploy.data.stats import dataset_statistics
from sskd_deploy.data.synth_scene import SOURCE_CLASSES, SYNTH_CLASSES, WORLDS, render_scene
from sskd_deploy.io import atomic_directory, dumps_json
from sskd_deploy.structures import Instances, masks_to_rles, rle_bbox

__all__ = ["SOURCE_CLASSES", "SYNTH_CLASSES", "WORLDS", "generate_synthetic", "labeled_subset", "render_image"]

GENERATOR_NAME = "synth-shapes"
GENERATOR_VERSION = 1
SPLITS = ("train", "val")  # position = split index in the per-image seed
_SUBSET_STREAM = 1000  # seed-sequence key of the labeled-subset draw; no split uses it
# The source world's images come from their own seed-sequence keys, so no source image shares a
# random stream with a target image of the same seed.
_SOURCE_STREAM = 2000


def _categories(world: str) -> list[dict]:
    return [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(WORLDS[world].classes)]


def render_image(
    seed: int, split_index: int, index: int, image_hw: tuple[int, int], world: str = "target"
) -> tuple[np.ndarray, Instances]:
    """Image ``index`` of split ``split_index`` of ``world`` ("target", the default dataset's, or
    "source", the pretraining world's) with ``seed``: uint8 ``(H, W, 3)`` and its instances."""
    if world not in WORLDS:
        raise ValueError(f"unknown synthetic world {world!r}; choose from {sorted(WORLDS)}")
    key = [seed, split_index, index] if world == "target" else [seed, _SOURCE_STREAM + split_index, index]
    return render_scene(np.random.default_rng(np.random.SeedSequence(key)), image_hw, WORLDS[world])


def labeled_subset(seed: int, num_train: int, labeled_fraction: float) -> list[int]:
    """Sorted train indices of the labeled split: ``round(labeled_fraction * num_train)`` of them
    (at least one), drawn with ``seed``."""
    count = min(num_train, max(1, int(round(labeled_fraction * num_train))))
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SUBSET_STREAM]))
    return sorted(int(i) for i in rng.choice(num_train, size=count, replace=False))


def _validate(
    seed: int, num_train: int, num_val: int, labeled_fraction: float, image_size: tuple[int, int]
) -> None:
    def is_int(value: object) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    problems = []
    # SeedSequence splits larger ints into several words, which could alias another seed's stream
    if not is_int(seed) or not 0 <= seed < 2**32:
        problems.append(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if not is_int(num_train) or num_train < 1:
        problems.append(f"num_train must be an integer >= 1, got {num_train!r}")
    if not is_int(num_val) or num_val < 1:
        problems.append(f"num_val must be an integer >= 1, got {num_val!r}")
    if isinstance(labeled_fraction, bool) or not isinstance(labeled_fraction, (int, float)) or not (
        0 < labeled_fraction <= 1
    ):
        problems.append(f"labeled_fraction must be in (0, 1], got {labeled_fraction!r}")
    sides = tuple(image_size) if isinstance(image_size, (tuple, list)) else ()
    if len(sides) != 2 or not all(is_int(s) and s >= 64 for s in sides):
        problems.append(f"image_size must be (height, width) with both sides >= 64, got {image_size!r}")
    if problems:
        raise ValueError("generate_synthetic: " + "; ".join(problems))


def _coco(images: list[dict], annotations: list[dict] | None, world: str) -> dict:
    """A COCO instances dict; ``annotations=None`` gives the images-only form of an unlabeled split."""
    coco = {"images": images, "categories": _categories(world)}
    if annotations is not None:
        coco["annotations"] = annotations
    return coco


def _annotate(instances: Instances, image_id: int, ids: Iterator[int]) -> list[dict]:
    """COCO annotation dicts (compressed RLE with str counts) of one image's instances; ids are
    drawn from ``ids`` so they are unique across splits (a labeled-subset id equals its train id)."""
    areas = instances.masks.sum(axis=(1, 2))
    return [
        {
            "id": next(ids), "image_id": image_id, "category_id": int(label) + 1, "segmentation": rle,
            "area": int(area), "bbox": rle_bbox(rle), "iscrowd": 0,
        }
        for rle, label, area in zip(masks_to_rles(instances.masks), instances.labels, areas)
    ]


def _as_dataset(name: str, coco: dict, out_dir: Path, world: str) -> Dataset:
    """The in-memory :class:`Dataset` of one written COCO dict, for statistics (paths not opened)."""
    by_image: dict[int, list[Annotation]] = {img["id"]: [] for img in coco["images"]}
    for ann in coco.get("annotations", []):
        by_image[ann["image_id"]].append(Annotation(ann["category_id"] - 1, ann["segmentation"]))
    labeled = "annotations" in coco
    records = tuple(
        ImageRecord(
            img["id"], img["file_name"], out_dir / "images" / img["file_name"], img["height"], img["width"],
            tuple(by_image[img["id"]]) if labeled else None,
        )
        for img in coco["images"]
    )
    names = WORLDS[world].classes
    categories = CategorySet(names, tuple(range(1, len(names) + 1)))
    return Dataset(name, categories, records, out_dir / "annotations" / f"{name}.json", out_dir / "images")


def _render_split(
    root: Path, seed: int, split: str, count: int, first_id: int, image_hw: tuple[int, int],
    ann_ids: Iterator[int], tick: Callable[[], None], world: str,
) -> list[tuple[dict, list[dict]]]:
    """Render and write one split's images under ``root/images/<split>``; returns ``(COCO image,
    its annotations)`` per image."""
    folder = root / "images" / split
    folder.mkdir(parents=True)
    out = []
    for index in range(count):
        image, instances = render_image(seed, SPLITS.index(split), index, image_hw, world)
        (folder / f"{index:06d}.png").write_bytes(encode_png(image))
        entry = {"id": first_id + index, "file_name": f"{split}/{index:06d}.png",
                 "height": image_hw[0], "width": image_hw[1]}
        out.append((entry, _annotate(instances, entry["id"], ann_ids)))
        tick()
    return out


def _coco_files(
    rendered: dict[str, list[tuple[dict, list[dict]]]], keep: list[int], world: str
) -> dict[str, dict]:
    """The four COCO dicts by split name; ``keep`` are the train indices of the labeled subset."""
    train, val = rendered["train"], rendered["val"]
    unlabeled = sorted(set(range(len(train))) - set(keep))
    return {
        "train": _coco([e for e, _ in train], [a for _, anns in train for a in anns], world),
        "train_labeled": _coco([train[i][0] for i in keep], [a for i in keep for a in train[i][1]], world),
        "train_unlabeled": _coco([train[i][0] for i in unlabeled], None, world),
        "val": _coco([e for e, _ in val], [a for _, anns in val for a in anns], world),
    }


def _manifest(params: dict, files: dict[str, dict], out_dir: Path, world: str) -> dict:
    splits = {name: {"format": "coco", "annotations": f"annotations/{name}.json", "images": "images"}
              for name in files}
    statistics = {name: dataset_statistics(_as_dataset(name, files[name], out_dir, world))
                  for name in ("train_labeled", "train", "val")}
    return {
        "format": "sskd-deploy/dataset", "version": 1, "name": GENERATOR_NAME,
        "generator": {"name": GENERATOR_NAME, "version": GENERATOR_VERSION, **params},
        "classes": list(WORLDS[world].classes), "splits": splits,
        "default_splits": {"labeled": "train_labeled", "unlabeled": "train_unlabeled", "val": "val",
                           "all_labels": "train"},
        "statistics": statistics,
    }


def generate_synthetic(
    out_dir: Path,
    *,
    seed: int = 0,
    num_train: int = 400,
    num_val: int = 100,
    labeled_fraction: float = 0.1,
    image_size: tuple[int, int] = (192, 256),
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    world: str = "target",
) -> dict:
    """Write the synthetic dataset to ``out_dir`` (layout in the module docstring).

    ``image_size`` is ``(height, width)``. Train image ``i`` has COCO id ``i + 1``; val ids follow.
    ``progress(done, total)`` is called after each image. Nothing appears at ``out_dir`` unless the
    whole dataset was written (an existing one is replaced only with ``overwrite``, else
    ``FileExistsError``). Returns the manifest dict also written to ``out_dir/dataset.json``.
    ``world="source"`` writes the pretraining world instead (its own classes and seed streams).
    Raises ``ValueError`` on bad arguments.
    """
    _validate(seed, num_train, num_val, labeled_fraction, image_size)
    if world not in WORLDS:
        raise ValueError(f"generate_synthetic: unknown world {world!r}; choose from {sorted(WORLDS)}")
    hw = (int(image_size[0]), int(image_size[1]))
    params = {"seed": int(seed), "num_train": int(num_train), "num_val": int(num_val),
              "labeled_fraction": float(labeled_fraction), "image_size": list(hw)}
    if world != "target":  # the target world's manifest stays as it always was
        params["world"] = world
    counts, first_ids = {"train": num_train, "val": num_val}, {"train": 1, "val": num_train + 1}
    total, done = num_train + num_val, [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    with atomic_directory(Path(out_dir), overwrite=overwrite) as tmp:
        ann_ids = itertools.count(1)  # one sequence: annotation ids are unique across splits
        rendered = {
            split: _render_split(tmp, int(seed), split, counts[split], first_ids[split], hw, ann_ids, tick, world)
            for split in SPLITS
        }
        files = _coco_files(rendered, labeled_subset(int(seed), num_train, float(labeled_fraction)), world)
        (tmp / "annotations").mkdir()
        for name, coco in files.items():
            (tmp / "annotations" / f"{name}.json").write_text(dumps_json(coco))
        manifest = _manifest(params, files, Path(out_dir), world)
        (tmp / "dataset.json").write_text(dumps_json(manifest))
    return manifest
