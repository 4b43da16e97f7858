"""Split a labeled dataset into the labeled part D_l and the unlabeled part D_u.

Either by a fraction drawn with a seeded generator (the same seed gives the same split on every
machine, whatever order the reader listed the images in) or by a split file naming the labeled
images. The unlabeled part drops its annotations, so nothing downstream can read them by mistake.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from sskd_deploy.data.paths import read_text
from sskd_deploy.data.records import Dataset
from sskd_deploy.errors import ConfigError, DatasetError


def split_by_fraction(dataset: Dataset, fraction: float, *, seed: int = 0) -> tuple[Dataset, Dataset]:
    """``(labeled, unlabeled)`` with ``round(fraction * N)`` labeled images (at least one).

    Images are ordered by ``file_name`` before the seeded permutation, so the split depends on
    the set of images and the seed only. Both parts keep the dataset's record order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError("data.split.labeled_fraction", [f"must be in (0, 1], got {fraction}"])
    _require_labeled(dataset)
    n = len(dataset.records)
    order = sorted(range(n), key=lambda i: (dataset.records[i].file_name, dataset.records[i].image_id))
    permuted = np.random.default_rng(seed).permutation(n)
    chosen = {order[i] for i in permuted[: max(1, round(fraction * n))].tolist()}
    meta = {"fraction": fraction, "seed": seed}
    return _partition(dataset, chosen, meta)


def split_by_file(dataset: Dataset, split_file: Path) -> tuple[Dataset, Dataset]:
    """``(labeled, unlabeled)`` where the labeled images are those ``split_file`` names.

    One image per line; blank lines and lines starting with ``#`` are ignored. A line matches a
    record's ``file_name`` exactly, or else its base name when exactly one record has it. A line
    matching nothing, several images, or an image named before is an error with its line number.
    """
    split_file = Path(split_file)
    _require_labeled(dataset)
    by_name = {os.path.normpath(r.file_name): i for i, r in enumerate(dataset.records)}
    by_base: dict[str, list[int]] = {}
    for i, r in enumerate(dataset.records):
        by_base.setdefault(os.path.basename(r.file_name), []).append(i)
    chosen: dict[int, int] = {}
    for lineno, entry in _split_entries(split_file):
        index = _match(entry, by_name, by_base, dataset, split_file, lineno)
        if index in chosen:
            problem = f"line {lineno}: {entry!r} names the same image as line {chosen[index]}"
            raise DatasetError(split_file, problem)
        chosen[index] = lineno
    return _partition(dataset, set(chosen), {"split_file": str(split_file)})


def _split_entries(split_file: Path) -> list[tuple[int, str]]:
    text = read_text(split_file)
    assert text is not None  # raise_problem raised otherwise
    entries = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]
    entries = [(n, e) for n, e in entries if e and not e.startswith("#")]
    if not entries:
        raise DatasetError(split_file, "lists no image file names")
    return entries


def _match(
    entry: str,
    by_name: dict[str, int],
    by_base: dict[str, list[int]],
    dataset: Dataset,
    split_file: Path,
    lineno: int,
) -> int:
    """Index of the record ``entry`` names: exact path first, then a unique base name."""
    exact = by_name.get(os.path.normpath(entry))
    if exact is not None:
        return exact
    candidates = by_base.get(entry, [])
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        names = ", ".join(dataset.records[i].file_name for i in candidates[:3])
        problem = f"matches {len(candidates)} images ({names}); write the path relative to the image root"
    else:
        problem = f"matches no image of dataset {dataset.name!r} ({dataset.source})"
    raise DatasetError(split_file, f"line {lineno}: {entry!r} {problem}")


def _require_labeled(dataset: Dataset) -> None:
    if not dataset.records:
        raise DatasetError(dataset.source, f"dataset {dataset.name!r} has no images to split")
    if not dataset.labeled:
        problem = f"dataset {dataset.name!r} is unlabeled; only a labeled set can be split"
        raise DatasetError(dataset.source, problem)


def _partition(dataset: Dataset, chosen: set[int], meta: dict) -> tuple[Dataset, Dataset]:
    keep = sorted(chosen)
    rest = [i for i in range(len(dataset.records)) if i not in chosen]
    labeled = dataset.subset(keep, name=f"{dataset.name}_labeled")
    unlabeled = dataset.subset(rest, name=f"{dataset.name}_unlabeled")
    unlabeled = dataclasses.replace(
        unlabeled, records=tuple(dataclasses.replace(r, annotations=None) for r in unlabeled.records)
    )
    for part, role in ((labeled, "labeled"), (unlabeled, "unlabeled")):
        part.meta["split"] = {**meta, "role": role}
    return labeled, unlabeled
