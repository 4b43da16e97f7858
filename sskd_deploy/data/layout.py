"""What a dataset directory holds, found without being told, and how to load it.

Discovery (:func:`discover`) looks at names on disk, the manifest and, for a ``.json`` whose name
says nothing, its top-level keys; it returns the splits as :class:`SplitSource` descriptions.
Loading them is separate so that ``data check`` can run the same readers in collecting mode.
Recognised, in this order:

1. ``dataset.json``, our manifest (the synthetic generator writes one) naming each split;
2. ``gtFine/``: a Cityscapes root, with whichever of ``train`` / ``val`` exist;
3. COCO files under ``annotations/``, at the top, or one per split sub-folder (Roboflow's
   ``train/_annotations.coco.json``): see :mod:`sskd_deploy.data.annotation_files`;
4. a single COCO ``.json`` file;
5. a folder of images, read as one unlabeled split named ``images``, but only when it holds no
   annotation file that could have been meant: YOLO ``labels/`` and COCO files deeper down are
   refused with what to do instead.

:func:`describe_reading` turns the result into the one line every command prints, so that the way
a directory was read is never a surprise.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sskd_deploy.data.annotation_files import (
    MANIFEST_NAME,
    YOLO_REFUSAL,
    deep_annotation_files,
    find_coco_files,
    how_to_choose,
    yolo_labels,
)
from sskd_deploy.data.cityscapes import parse_cityscapes
from sskd_deploy.data.coco import load_json_object, parse_coco
from sskd_deploy.data.folder import list_images, scan_image_folder
from sskd_deploy.data.paths import Report, raise_problem, unsafe_name_problem
from sskd_deploy.data.records import CategorySet, Dataset
from sskd_deploy.errors import DatasetError

Log = Callable[[str], None]
MANIFEST_FORMAT = "sskd-deploy/dataset"
MANIFEST_VERSION = 1
KINDS = ("coco", "cityscapes", "folder")
_SPLIT_PATH_KEYS = {"coco": ("annotations",), "folder": ("images",), "cityscapes": ("split",)}


@dataclass(frozen=True)
class SplitSource:
    """Where one split lives: ``path`` is the COCO file, the Cityscapes root or the image folder.

    ``images`` is a COCO file's image root (``None``: the reader's default); an empty ``name``
    lets the reader name the dataset.
    """

    name: str
    kind: str
    path: Path
    images: Path | None = None
    split: str | None = None

    def load(self, report: Report = raise_problem) -> Dataset | None:
        """Run the reader for ``kind``; ``None`` only when ``report`` collects instead of raising."""
        name = self.name or None
        if self.kind == "coco":
            return parse_coco(self.path, self.images, name=name, report=report)
        if self.kind == "cityscapes":
            return parse_cityscapes(self.path, self.split or "train", name=name, report=report)
        return scan_image_folder(self.path, name=name, report=report)


@dataclass(frozen=True)
class Layout:
    """The result of discovery: the splits, and the manifest's class list when there is one."""

    path: Path
    sources: tuple[SplitSource, ...]
    classes: tuple[str, ...] | None = None


def load_dataset(
    kind: str,
    path: Path,
    *,
    images: Path | None = None,
    split: str | None = None,
    name: str | None = None,
    log: Log | None = None,
) -> Dataset:
    """Load one dataset of a given kind (as a config names it); raise :class:`DatasetError` on problems.

    ``images`` is a COCO file's image root. For ``coco`` a directory is opened with
    :func:`open_dataset_dir` and ``split`` picks one of its splits; for ``cityscapes`` ``split``
    defaults to ``train``. ``log`` receives the line saying how ``path`` was read.
    """
    path = Path(path)
    if kind == "coco" and path.is_dir():
        layout = discover(path)
        if all(s.kind == "folder" for s in layout.sources) and layout.classes is None:
            raise DatasetError(path, "kind coco, but this folder holds images and no COCO annotation file; "
                                     "name the .json, or use kind: folder for unlabeled images")
        dataset = pick_split(_open_layout(layout, log), split, path)
        return dataclasses.replace(dataset, name=name) if name else dataset
    if kind not in KINDS:
        raise DatasetError(path, f"unknown dataset kind {kind!r} (expected one of {', '.join(KINDS)})")
    source = SplitSource(name or "", kind, path, images, split)
    dataset = source.load()
    assert dataset is not None
    if log is not None:
        log(f"{path} read as {describe_reading(Layout(path, (source,)), {source.name: dataset})}")
    return dataset


def pick_split(splits: dict[str, Dataset], split: str | None, path: Path) -> Dataset:
    """The split named ``split``, or the only one when ``split`` is ``None``."""
    if split is None and len(splits) == 1:
        return next(iter(splits.values()))
    if split not in splits:
        wanted = "name one with split" if split is None else f"no split named {split!r}"
        raise DatasetError(path, f"{wanted} (have: {', '.join(sorted(splits))})")
    return splits[split]


def open_dataset_dir(path: Path, log: Log | None = None) -> dict[str, Dataset]:
    """Every split of what ``path`` holds, by name; raise :class:`DatasetError` on the first problem.

    ``log`` receives one line saying how ``path`` was read (:func:`describe_reading`).
    """
    return _open_layout(discover(path), log)


def _open_layout(layout: Layout, log: Log | None) -> dict[str, Dataset]:
    datasets = {}
    for source in layout.sources:
        dataset = source.load()
        assert dataset is not None
        datasets[source.name] = dataset
    datasets = reconcile_categories(layout, datasets)
    if log is not None:
        log(f"{layout.path} read as {describe_reading(layout, datasets)}")
    return datasets


def discover(path: Path) -> Layout:
    """Find the splits of a directory or file (see the module docstring for the order)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(path, "not found")
    if path.is_file():
        if path.name == MANIFEST_NAME:
            return discover(path.parent)
        if path.suffix.lower() == ".json":
            return Layout(path, (SplitSource(path.stem, "coco", path),))
        raise DatasetError(path, "not a dataset: expected a directory or a COCO .json file")
    if (path / MANIFEST_NAME).is_file():
        manifest = read_manifest(path / MANIFEST_NAME)
        return Layout(path, _manifest_sources(path, manifest), tuple(manifest["classes"]))
    if (path / "gtFine").is_dir():
        splits = [s for s in ("train", "val") if (path / "gtFine" / s).is_dir()]
        if not splits:
            raise DatasetError(path / "gtFine", "Cityscapes folder without a train or val split")
        return Layout(path, tuple(SplitSource(s, "cityscapes", path, split=s) for s in splits))
    files = find_coco_files(path)
    if files:
        return Layout(path, tuple(SplitSource(f.split, "coco", f.path, f.images) for f in files))
    return _image_folder(path)


def _image_folder(path: Path) -> Layout:
    """``path`` as unlabeled images, once nothing in it could have been meant as its labels."""
    labels = yolo_labels(path)
    if labels is not None:
        raise DatasetError(labels, YOLO_REFUSAL)
    deeper = deep_annotation_files(path)
    if deeper:
        shown = ", ".join(p.relative_to(path).as_posix() for p in deeper)
        raise DatasetError(path, f"holds annotation files below its sub-folders ({shown}), where discovery does "
                                 f"not look; point at the folder holding them, or {how_to_choose(path)}")
    if list_images(path):
        return Layout(path, (SplitSource("images", "folder", path),))
    raise DatasetError(
        path, f"no dataset found: expected {MANIFEST_NAME}, gtFine/, COCO .json files (annotations/, at the top "
              "or in split folders) or image files"
    )


_KIND_NAMES = {"coco": "COCO", "cityscapes": "Cityscapes", "folder": "image folder"}


def describe_reading(layout: Layout, datasets: dict[str, Dataset]) -> str:
    """How ``layout`` was read, in one line: ``COCO: annotations.json, 18 images, 3 classes``.

    ``datasets`` are the loaded splits by name; a split missing from it is shown as unreadable.
    """
    if layout.classes is not None:
        label = f"sskd-deploy dataset ({MANIFEST_NAME})"
    elif [s.kind for s in layout.sources] == ["folder"]:
        count = _count(datasets.get(layout.sources[0].name))
        return f"image folder (no annotation file found): {count}, unlabeled"
    else:
        label = " + ".join(_KIND_NAMES[k] for k in sorted({s.kind for s in layout.sources}))
    classes = _describe_classes(layout, datasets)
    parts = [(_where(layout, s), _count(datasets.get(s.name))) for s in layout.sources]
    if len(parts) == 1:
        return f"{label}: {parts[0][0]}, {parts[0][1]}, {classes}"
    return f"{label}: {', '.join(f'{where} ({count})' for where, count in parts)}; {classes}"


def _count(dataset: Dataset | None) -> str:
    return "unreadable" if dataset is None else _plural(len(dataset.records), "image")


def _where(layout: Layout, source: SplitSource) -> str:
    """The split as the user would name it: its file relative to the dataset, or its Cityscapes split."""
    if source.kind == "cityscapes":
        return f"{source.split}"
    where = _shown(layout.path, source.path)
    if source.kind == "coco" and source.images is not None and source.images != source.path.parent:
        where += f" with images in {_shown(layout.path, source.images)}/"
    return where


def _describe_classes(layout: Layout, datasets: dict[str, Dataset]) -> str:
    if layout.classes is not None:
        return _plural(len(layout.classes), "class")
    counts = sorted({len(d.categories) for d in datasets.values() if len(d.categories)})
    if not counts:
        return "no classes"
    return _plural(counts[0], "class") if len(counts) == 1 else f"{'/'.join(map(str, counts))} classes"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith('s') else 's'}"


def _shown(root: Path, path: Path) -> str:
    """``path`` relative to the dataset ``root`` (a folder, or a file whose folder counts) where it lies below."""
    base = root.parent if root.is_file() else root
    relative = os.path.relpath(path, base)
    return str(path) if relative.startswith("..") else Path(relative).as_posix()


def read_manifest(path: Path) -> dict:
    """Read and validate a ``dataset.json`` manifest; every path in it stays inside its folder."""
    path = Path(path)
    manifest = load_json_object(path)
    assert manifest is not None
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
        found = f"{manifest.get('format')!r} version {manifest.get('version')!r}"
        raise DatasetError(path, f"unknown manifest format {found} (expected {MANIFEST_FORMAT!r} version 1)")
    classes = manifest.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DatasetError(path, "'classes' must be a list of class names")
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise DatasetError(path, "'splits' must be a non-empty object of split name -> description")
    for name, entry in splits.items():
        _check_split_entry(path, name, entry)
    defaults = manifest.get("default_splits", {})
    if not isinstance(defaults, dict) or any(v not in splits for v in defaults.values()):
        raise DatasetError(path, f"'default_splits' {defaults!r} must map roles to split names of 'splits'")
    return manifest


def _check_split_entry(path: Path, name: str, entry: object) -> None:
    if not isinstance(entry, dict) or entry.get("format") not in _SPLIT_PATH_KEYS:
        raise DatasetError(path, f"split {name!r} needs a 'format' of {', '.join(KINDS)}")
    for key in (*_SPLIT_PATH_KEYS[entry["format"]], "images", "root"):
        value = entry.get(key)
        if value is None and key in _SPLIT_PATH_KEYS[entry["format"]]:
            raise DatasetError(path, f"split {name!r} has no {key!r}")
        if value is None:
            continue
        if not isinstance(value, str):
            raise DatasetError(path, f"split {name!r} {key} must be a string, found {value!r}")
        if os.path.normpath(value) != "." and (problem := unsafe_name_problem(value)) is not None:
            raise DatasetError(path, f"split {name!r} {key} {value!r} {problem} {path.parent}")


def _below(root: Path, name: str | None) -> Path:
    """``root / name`` for a name :func:`_check_split_entry` accepted; kept relative when ``root`` is,
    so messages show paths the way the user wrote them."""
    if name is None or os.path.normpath(name) == ".":
        return root
    if unsafe_name_problem(name) is not None:  # unreachable after validation; never open outside root
        raise DatasetError(root / MANIFEST_NAME, f"path {name!r} escapes {root}")
    return root / os.path.normpath(name)


def _manifest_sources(root: Path, manifest: dict) -> tuple[SplitSource, ...]:
    sources = []
    for name, entry in manifest["splits"].items():
        images = _below(root, entry.get("images"))
        if entry["format"] == "coco":
            sources.append(SplitSource(name, "coco", _below(root, entry["annotations"]), images))
        elif entry["format"] == "folder":
            sources.append(SplitSource(name, "folder", images))
        else:
            city_root = _below(root, entry.get("root"))
            sources.append(SplitSource(name, "cityscapes", city_root, split=entry["split"]))
    return tuple(sources)


def reconcile_categories(
    layout: Layout, datasets: dict[str, Dataset], report: Report = raise_problem
) -> dict[str, Dataset]:
    """Give class-less (unlabeled) splits the classes of the labeled ones; check the manifest's list.

    An images-only COCO file or an image folder carries no classes, but the model trained on the
    dataset needs them whichever split it is handed.
    """
    with_classes = [d for d in datasets.values() if len(d.categories)]
    where = layout.path / MANIFEST_NAME if layout.classes is not None else layout.path
    if layout.classes is not None:
        for d in with_classes:
            if d.categories.names != layout.classes:
                report(where, f"split {d.name!r} has classes {list(d.categories.names)}, the manifest lists "
                              f"{list(layout.classes)}")
    reference = with_classes[0].categories if with_classes else None
    if reference is None and layout.classes:
        reference = CategorySet(layout.classes, tuple(range(1, len(layout.classes) + 1)))
    if reference is None or any(d.categories != reference for d in with_classes):
        return datasets  # nothing to share, or no single class list to share
    return {
        key: d if len(d.categories) else dataclasses.replace(d, categories=reference)
        for key, d in datasets.items()
    }
