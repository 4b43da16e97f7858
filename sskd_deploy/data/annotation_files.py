"""Which annotation files a dataset directory holds, so that discovery never reads a labeled
dataset as unlabeled images without saying so.

COCO files are looked for in three places, and a directory may use only one of them:

* ``annotations/*.json`` (COCO's own layout; only ``instances_*.json`` when there are any, because
  that folder also holds captions and keypoints files), images under ``images/``, or under
  ``<split>/`` for ``instances_<split>.json`` (COCO 2017: ``val2017/``), else beside ``annotations/``;
* ``*.json`` at the top, images named relative to the top (``annotations.json`` + sub-folders);
* one ``*.json`` in each sub-folder, beside its images (Roboflow's ``train/_annotations.coco.json``,
  ``valid/...``, ``test/...``); the split is named after the folder.

A file counts when its name says it holds annotations (:data:`NAMED`); any other ``.json`` is
opened and counts when it has COCO's ``images`` or ``annotations`` key, or when it cannot be parsed
(it may be a broken annotation file: the reader then names it, rather than the data being read as
unlabeled images). Two files for one split are an error listing both.

YOLO labels (``labels/*.txt``) are recognised only to be refused with a conversion route.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path

from sskd_deploy.errors import DatasetError

ANNOTATIONS_DIR = "annotations"
MANIFEST_NAME = "dataset.json"  # our own manifest, read before any of this
NAMED = ("instances_*.json", "*annotations*.json", "*.coco.json", "coco*.json", "*_coco.json")
# Deeper than discovery looks, only names this specific are worth a refusal.
_DEEP_NAMED = ("instances_*.json", "*_annotations.coco.json", "*.coco.json")
_SKIPPED_DIRS = (ANNOTATIONS_DIR,)
YOLO_REFUSAL = (
    "YOLO format is not supported; convert with the supervision package "
    "(pip install supervision; sv.DetectionDataset.from_yolo(images_directory_path=..., "
    "annotations_directory_path=..., data_yaml_path=..., force_masks=True).as_coco(images_directory_path=..., "
    "annotations_path=...)) and pass the COCO JSON it writes; see README, Your data"
)


@dataclass(frozen=True)
class CocoFile:
    """One COCO split found on disk: its name, the JSON file and the folder its file names are relative to."""

    split: str
    path: Path
    images: Path


def find_coco_files(root: Path) -> list[CocoFile]:
    """The COCO files of directory ``root`` (empty when none); raise :class:`DatasetError` on ambiguity."""
    places = [_annotations_folder(root), _top_level(root), _split_folders(root)]
    used = [found for found in places if found]
    if len(used) > 1:
        files = [f for found in used for f in found]
        raise DatasetError(root, f"ambiguous: annotation files in more than one place ({_listing(root, files)}); "
                                 f"{how_to_choose(root)}")
    return used[0] if used else []


def how_to_choose(root: Path) -> str:
    return (f"pass the one you mean instead of the folder (e.g. sskd-deploy data check {root}/<file>.json), "
            "or name it in the config (data.<role>: {kind: coco, path: <file>.json, images: <image folder>})")


def split_name(path: Path) -> str:
    """``instances_val2017.json`` -> ``instances_val2017``; ``_annotations.coco.json`` -> ``annotations``."""
    name = path.name[: -len(".json")] if path.name.lower().endswith(".json") else path.name
    if name.lower().endswith(".coco"):
        name = name[: -len(".coco")]
    return name.strip("_") or path.stem


def _listing(root: Path, files: list[CocoFile]) -> str:
    return ", ".join(_relative(root, f.path) for f in files)


def _relative(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _json_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.json") if p.is_file() and not p.name.startswith("."))


def _is_named(path: Path, patterns: tuple[str, ...] = NAMED) -> bool:
    return any(fnmatch.fnmatch(path.name.lower(), p) for p in patterns)


def looks_like_coco(path: Path) -> bool:
    """Named like annotations, holding COCO's top-level keys, or unparseable (so possibly a broken one)."""
    if _is_named(path):
        return True
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return True
    return isinstance(data, dict) and ("images" in data or "annotations" in data)


def _annotations_folder(root: Path) -> list[CocoFile]:
    files = _json_files(root / ANNOTATIONS_DIR)
    files = [p for p in files if p.name.startswith("instances_")] or files
    return [CocoFile(split_name(p), p, _coco_image_root(root, p)) for p in files]


def _coco_image_root(root: Path, file: Path) -> Path:
    if (root / "images").is_dir():
        return root / "images"
    split = split_name(file).removeprefix("instances_")
    if split and (root / split).is_dir() and not split.startswith("."):
        return root / split
    return root


def _top_level(root: Path) -> list[CocoFile]:
    files = [p for p in _json_files(root) if p.name != MANIFEST_NAME and looks_like_coco(p)]
    return [CocoFile(split_name(p), p, root) for p in files]


def _split_folders(root: Path) -> list[CocoFile]:
    found = []
    for folder in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_split_order):
        if folder.name in _SKIPPED_DIRS:
            continue
        files = [p for p in _json_files(folder) if looks_like_coco(p)]
        if len(files) > 1:
            listing = ", ".join(_relative(root, p) for p in files)
            raise DatasetError(root, f"ambiguous: {len(files)} candidate annotation files for split "
                                     f"{folder.name!r} ({listing}); {how_to_choose(root)}")
        if files:
            found.append(CocoFile(folder.name, files[0], folder))
    return found


def _split_order(folder: Path) -> tuple[int, str]:
    """train, valid/val, test first (the order exports use), then the rest by name."""
    known = ("train", "valid", "val", "test")
    return (known.index(folder.name) if folder.name in known else len(known), folder.name)


def yolo_labels(root: Path) -> Path | None:
    """The ``labels/`` folder of a YOLO dataset (at the top or one split folder down), if any."""
    for labels in (root / "labels", *sorted(root.glob("*/labels"))):
        if labels.is_dir() and next(labels.rglob("*.txt"), None) is not None:
            return labels
    return None


def deep_annotation_files(root: Path, limit: int = 3) -> list[Path]:
    """Files named like COCO annotations more than one folder below ``root`` (at most ``limit``)."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        depth = len(Path(folder).relative_to(root).parts)
        found += [Path(folder) / f for f in sorted(files) if depth >= 2 and _is_named(Path(f), _DEEP_NAMED)]
        if len(found) >= limit:
            break
    return found[:limit]
