"""``data check``: validate a dataset and list every problem, not just the first.

The readers run in collecting mode (see :mod:`sskd_deploy.data.paths`), so the rules checked here
are exactly the rules normal reading enforces. On top of reading, every image is decoded in full,
because a truncated file keeps a valid header and would otherwise only fail mid-training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sskd_deploy.data.image_io import read_image
from sskd_deploy.data.layout import SplitSource, describe_reading, discover, reconcile_categories
from sskd_deploy.data.paths import ProblemList, Report
from sskd_deploy.data.records import Dataset, ImageRecord
from sskd_deploy.errors import DatasetError, InputError

Progress = Callable[[int, int], None]


@dataclass
class CheckReport:
    """What ``check_dataset`` found.

    ``splits`` maps each split name to counts: ``images``, ``labeled``, ``instances``, ``crowd``,
    ``classes`` and ``problems`` (problems found while reading that split). ``problems`` holds
    one line per problem, each starting with the file it concerns. ``reading`` says how the path
    was read (``COCO: annotations.json, 18 images, 3 classes``); empty when discovery failed.
    """

    path: Path
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    reading: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "ok": self.ok, "reading": self.reading, "splits": self.splits,
                "problems": list(self.problems)}


def check_dataset(path: Path, *, progress: Progress | None = None) -> CheckReport:
    """Discover what ``path`` holds, read every split and decode every image; collect all problems.

    ``progress(done, total)`` is called after each image is decoded.
    """
    path = Path(path)
    report = CheckReport(path)
    try:
        layout = discover(path)
    except DatasetError as err:
        report.problems.append(str(err))
        return report
    problems = ProblemList()
    datasets: dict[str, Dataset] = {}
    counts: dict[str, int] = {}
    for source in layout.sources:
        before = len(problems)
        dataset = _read_split(source, problems)
        counts[source.name] = len(problems) - before
        if dataset is not None:
            datasets[source.name] = dataset
    datasets = reconcile_categories(layout, datasets, report=problems)
    report.reading = describe_reading(layout, datasets)
    _decode_all(datasets, problems, counts, progress)
    for source in layout.sources:
        dataset = datasets.get(source.name)
        report.splits[source.name] = {**_statistics(dataset), "problems": counts[source.name]}
    report.problems = problems.problems
    return report


def _read_split(source: SplitSource, problems: ProblemList) -> Dataset | None:
    before = len(problems)
    dataset = source.load(report=problems)
    if dataset is not None and not dataset.records and len(problems) == before:
        problems(source.path, f"split {source.name!r} lists no images")
    return dataset


def _decode_all(
    datasets: dict[str, Dataset], problems: ProblemList, counts: dict[str, int], progress: Progress | None
) -> None:
    """Decode each distinct image once (splits such as ``train`` and ``train_labeled`` share files)."""
    sizes: dict[Path, tuple[int, int] | None] = {}
    total = len({r.path for d in datasets.values() for r in d.records})
    for name, dataset in datasets.items():
        before = len(problems)
        for record in dataset.records:
            if record.path not in sizes:
                sizes[record.path] = _decoded_size(record.path, problems)
                if progress is not None:
                    progress(len(sizes), total)
            _compare_size(record, sizes[record.path], dataset, problems)
        counts[name] += len(problems) - before


def _decoded_size(path: Path, report: Report) -> tuple[int, int] | None:
    try:
        pixels = read_image(path)
    except InputError as err:
        report(err.path, err.problem)
        return None
    return int(pixels.shape[0]), int(pixels.shape[1])


def _compare_size(
    record: ImageRecord, size: tuple[int, int] | None, dataset: Dataset, report: Report
) -> None:
    if size is not None and size != (record.height, record.width):
        listed = f"{record.height}x{record.width}"
        report(record.path, f"decoded image is {size[0]}x{size[1]} (HxW) but {dataset.source} says {listed}")


def _statistics(dataset: Dataset | None) -> dict[str, Any]:
    if dataset is None:
        return {"images": 0, "labeled": 0, "instances": 0, "crowd": 0, "classes": 0}
    anns = [a for r in dataset.records for a in r.annotations or ()]
    crowd = sum(a.iscrowd for a in anns)
    return {
        "images": len(dataset.records),
        "labeled": sum(r.labeled for r in dataset.records),
        "instances": len(anns) - crowd,
        "crowd": crowd,
        "classes": len(dataset.categories),
    }
