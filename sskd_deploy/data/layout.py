"""What a dataset directory holds, found without being told, and how to load it.

Discovery (:func:`discover`) only looks at names on disk and the manifest; it returns the splits
as :class:`SplitSource` descriptions. Loading them is separate so that ``data check`` can run the
same readers in collecting mode. Recognised, in this order:

1. ``dataset.json``, our manifest (the synthetic generator writes one) naming each split;
2. ``gtFine/``: a Cityscapes root, with whichever of ``train`` / ``val`` exist;
3. ``annotations/*.json``: one COCO split per file (only ``instances_*.json`` when there are any,
   because COCO's own folder also holds captions and keypoints files), images under ``images/``;
4. a single COCO ``.json`` file;
5. a folder of images, read as one unlabeled split named ``images``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from sskd_deploy.data.cityscapes import parse_cityscapes
from sskd_deploy.data.coco import load_json_object, parse_coco
from sskd_deploy.data.folder import list_images, scan_image_folder
from sskd_deploy.data.paths import Report, raise_problem, unsafe_name_problem
from sskd_deploy.data.records import CategorySet, Dataset
from sskd_deploy.errors import DatasetError

MANIFEST_NAME = "dataset.json"
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
    kind: str, path: Path, *, images: Path | None = None, split: str | None = None, name: str | None = None
) -> Dataset:
    """Load one dataset of a given kind (as a config names it); raise :class:`DatasetError` on problems.

    ``images`` is a COCO file's image root. For ``coco`` a directory is opened with
    :func:`open_dataset_dir` and ``split`` picks one of its splits; for ``cityscapes`` ``split``
    defaults to ``train``.
    """
    path = Path(path)
    if kind == "coco" and path.is_dir():
        dataset = pick_split(open_dataset_dir(path), split, path)
        return dataclasses.replace(dataset, name=name) if name else dataset
    if kind not in KINDS:
        raise DatasetError(path, f"unknown dataset kind {kind!r} (expected one of {', '.join(KINDS)})")
    source = SplitSource(name or "", kind, path, images, split)
    dataset = source.load()
    assert dataset is not None
    return dataset


def pick_split(splits: dict[str, Dataset], split: str | None, path: Path) -> Dataset:
    """The split named ``split``, or the only one when ``split`` is ``None``."""
    if split is None and len(splits) == 1:
        return next(iter(splits.values()))
    if split not in splits:
        wanted = "name one with split" if split is None else f"no split named {split!r}"
        raise DatasetError(path, f"{wanted} (have: {', '.join(sorted(splits))})")
    return splits[split]


def open_dataset_dir(path: Path) -> dict[str, Dataset]:
    """Every split of what ``path`` holds, by name; raise :class:`DatasetError` on the first problem."""
    layout = discover(path)
    datasets = {}
    for source in layout.sources:
        dataset = source.load()
        assert dataset is not None
        datasets[source.name] = dataset
    return reconcile_categories(layout, datasets)


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
    files = sorted(p for p in (path / "annotations").glob("*.json") if p.is_file())
    files = [p for p in files if p.name.startswith("instances_")] or files
    if files:
        images = path / "images" if (path / "images").is_dir() else path
        return Layout(path, tuple(SplitSource(p.stem, "coco", p, images) for p in files))
    if list_images(path):
        return Layout(path, (SplitSource("images", "folder", path),))
    raise DatasetError(
        path, f"no dataset found: expected {MANIFEST_NAME}, gtFine/, annotations/*.json or image files"
    )


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
