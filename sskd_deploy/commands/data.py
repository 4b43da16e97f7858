"""``sskd-deploy data show`` and ``data check``, and the ground-truth overlays the main job draws.

``data synth`` needs nothing beyond :func:`sskd_deploy.data.sources.synthesize`, which the CLI calls.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sskd_deploy.commands.tables import print_check_report
from sskd_deploy.errors import DatasetError

if TYPE_CHECKING:
    from rich.console import Console

    from sskd_deploy.data.check import CheckReport
    from sskd_deploy.data.records import Dataset


def _default_split(splits: dict[str, Dataset], split: str | None, path: Path) -> Dataset:
    """``split`` by name, else the first labeled split (else the first split)."""
    from sskd_deploy.data.layout import pick_split

    if split is not None or len(splits) == 1:
        return pick_split(splits, split, path)
    labeled = [d for d in splits.values() if d.labeled]
    return (labeled or list(splits.values()))[0]


def draw_ground_truth(dataset: Dataset, indices: list[int], out: Path, *, columns: int = 4) -> Path:
    """Overlay the ground truth of ``dataset.records[indices]`` and write one PNG."""
    from sskd_deploy.data.image_io import read_image
    from sskd_deploy.data.visualize import save_overlay_grid

    if not indices:
        raise DatasetError(dataset.source, f"split {dataset.name!r} has no images to draw")
    items = [(read_image(dataset.records[i].path), dataset.records[i].instances()) for i in indices]
    return save_overlay_grid(items, dataset.categories.names, out, columns=columns)


def show_dataset(
    path: Path, out: Path, *, split: str | None = None, num: int = 8, columns: int = 4, seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> Path:
    """``data show``: the ground truth of ``num`` images of a split (a seeded sample; seed < 0: the first).

    ``log`` receives the line saying how ``path`` was read."""
    from sskd_deploy.data.layout import open_dataset_dir

    dataset = _default_split(open_dataset_dir(Path(path), log), split, Path(path))
    count = min(num, len(dataset.records))
    if seed < 0:
        chosen = list(range(count))
    else:
        chosen = sorted(np.random.default_rng(seed).choice(len(dataset.records), count, replace=False).tolist())
    return draw_ground_truth(dataset, chosen, out, columns=columns)


def check_command(path: Path, *, console: Console) -> CheckReport:
    """``data check``: validate the dataset at ``path`` and print the report (the CLI exits 1 when not ok)."""
    from sskd_deploy.data.check import check_dataset

    report = check_dataset(path)
    print_check_report(report, console)
    return report
