"""A folder of unlabeled images, searched recursively.

Only image suffixes count (jpg/jpeg/png/webp, any case); other files (notes, archives) are left
alone, and so are hidden files and folders (``.ipynb_checkpoints``, ``.DS_Store``). Files are
sorted by their relative path so image ids and splits do not depend on the file system's order.
Sizes come from the image headers; a full decode happens when the pixels are needed (or in
``data check``).
"""

from __future__ import annotations

import os
from pathlib import Path

from sskd_deploy.data.image_io import image_size
from sskd_deploy.data.paths import Report, raise_problem
from sskd_deploy.data.records import CategorySet, Dataset, ImageRecord
from sskd_deploy.errors import InputError

FOLDER_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def read_image_folder(
    root: Path, *, name: str | None = None, categories: CategorySet | None = None
) -> Dataset:
    """Every image below ``root`` as an unlabeled record; raise :class:`DatasetError` on the first problem.

    ``categories`` lets an unlabeled set carry the classes of the labeled set it goes with.
    """
    dataset = scan_image_folder(root, name=name, categories=categories, report=raise_problem)
    assert dataset is not None  # raise_problem raised otherwise
    return dataset


def scan_image_folder(
    root: Path,
    *,
    name: str | None = None,
    categories: CategorySet | None = None,
    report: Report = raise_problem,
) -> Dataset | None:
    """Like :func:`read_image_folder` but reports each unreadable image and skips it.

    Returns ``None`` when ``root`` is not a folder or holds no images at all.
    """
    root = Path(root)
    if not root.is_dir():
        report(root, "folder not found" if not root.exists() else "is not a folder")
        return None
    names = list_images(root)
    if not names:
        report(root, f"no images ({'/'.join(s[1:] for s in FOLDER_SUFFIXES)}) found in this folder or below")
        return None
    records = []
    for image_id, file_name in enumerate(names, start=1):
        path = (root / file_name).absolute()
        try:
            height, width = image_size(path)
        except InputError as err:
            report(err.path, err.problem)
            continue
        records.append(ImageRecord(image_id, file_name, path, height, width, None))
    categories = categories if categories is not None else CategorySet((), ())
    return Dataset(name or root.name, categories, tuple(records), root, root, {"format": "folder"})


def list_images(root: Path) -> list[str]:
    """Relative POSIX paths of the image files below ``root``, sorted; hidden entries skipped.

    Symlinked folders are not followed: a link cycle would never end and a link could lead
    outside the dataset.
    """
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(folder).relative_to(root)
        for file in files:
            if not file.startswith(".") and file.lower().endswith(FOLDER_SUFFIXES):
                found.append((rel / file).as_posix())
    return sorted(found)
