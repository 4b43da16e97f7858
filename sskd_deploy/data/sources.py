"""Turn the ``data`` section of a config into the datasets a run uses, by role.

Roles: ``labeled`` (D_l), ``unlabeled`` (D_u), ``val`` (labeled validation) and, for the synthetic
world only, ``all_labels`` (every train image with its labels, for "trained on all labels"
comparisons and for scoring pseudo-labels). With no datasets named, the synthetic default is
generated under ``data.root`` (or reused when an identical one is already there).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sskd_deploy.errors import DatasetError, SSKDError

if TYPE_CHECKING:
    from rich.console import Console

    from sskd_deploy.config import DataConfig, DatasetSpec
    from sskd_deploy.data.check import CheckReport
    from sskd_deploy.data.records import Dataset

SYNTH_NAME = "synth-shapes"


def _console(console: Console | None) -> Console:
    from rich.console import Console

    return console or Console(quiet=True)


def synthesize(
    out: Path, params: dict[str, Any], *, overwrite: bool, console: Console | None = None, show_stats: bool = True
) -> dict:
    """Generate the synthetic dataset with a progress bar; print its statistics and wall time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sskd_deploy.data.stats import format_statistics
    from sskd_deploy.data.synth import generate_synthetic

    console = _console(console)
    if Path(out).exists() and not overwrite:
        raise DatasetError(out, "already exists; pass --force to replace it")
    start = time.perf_counter()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("synthesising", total=params["num_train"] + params["num_val"])
        try:
            manifest = generate_synthetic(
                Path(out), overwrite=overwrite, progress=lambda done, total: bar.update(task, completed=done), **params
            )
        except ValueError as err:  # argument validation: a user error, reported as one line
            raise SSKDError(f"data synth: {err}") from None
    for split, stats in manifest.get("statistics", {}).items() if show_stats else ():
        console.print(f"[bold]{split}[/bold]\n{format_statistics(stats)}", highlight=False)
    console.print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return manifest


def synth_params(data_cfg: DataConfig) -> dict[str, Any]:
    s = data_cfg.synth
    return dict(
        seed=s.seed, num_train=s.num_train, num_val=s.num_val, labeled_fraction=s.labeled_fraction,
        image_size=tuple(s.image_size),
    )


def ensure_synthetic(root: Path, params: dict[str, Any], console: Console | None = None) -> dict:
    """Reuse ``root`` when it holds the synthetic dataset ``params`` generate, else (re)generate it.

    A directory that is not one of our synthetic datasets is never overwritten.
    """
    console = _console(console)
    manifest_path = root / "dataset.json"
    if manifest_path.is_file():
        try:
            generator = dict(json.loads(manifest_path.read_text()).get("generator", {}))
        except (OSError, json.JSONDecodeError, AttributeError) as err:
            raise DatasetError(manifest_path, f"unreadable manifest ({err})") from None
        if generator.get("name") != SYNTH_NAME:
            raise DatasetError(root, "exists and is not a synthetic dataset; choose another data.root")
        wanted = {**params, "image_size": list(params["image_size"])}
        if all(generator.get(k) == v for k, v in wanted.items()):
            console.print(f"reusing synthetic dataset {root} (same generator parameters)")
            return json.loads(manifest_path.read_text())
        console.print(f"regenerating {root}: generator parameters changed")
        return synthesize(root, params, overwrite=True, console=console, show_stats=False)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DatasetError(root, "exists, is not empty and has no dataset.json; choose another data.root")
    if root.exists():
        root.rmdir()
    return synthesize(root, params, overwrite=False, console=console, show_stats=False)


@dataclass(frozen=True)
class DataSources:
    """The datasets of a run by role, and what to validate (``check_paths``)."""

    labeled: Dataset
    unlabeled: Dataset
    val: Dataset
    all_labels: Dataset | None = None
    check_paths: tuple[Path, ...] = field(default_factory=tuple)
    origin: str = ""

    def roles(self) -> dict[str, Dataset]:
        roles = {"labeled": self.labeled, "unlabeled": self.unlabeled, "val": self.val}
        if self.all_labels is not None:
            roles["all_labels"] = self.all_labels
        return roles

    def describe(self) -> dict[str, Any]:
        return {"origin": self.origin, **{role: len(ds) for role, ds in self.roles().items()}}

    def check(self) -> list[CheckReport]:
        from sskd_deploy.data.check import check_dataset

        return [check_dataset(p) for p in self.check_paths]

    def content_hash(self) -> str:
        """sha256 over every role's records (names, sizes, annotations) and image bytes."""
        from sskd_deploy.provenance import hash_file

        digest = hashlib.sha256()
        for role, ds in sorted(self.roles().items()):
            digest.update(f"{role}\0{ds.categories.names}\n".encode())
            for r in ds.records:
                anns = None if r.annotations is None else [(a.category, a.rle["counts"], a.iscrowd) for a in r.annotations]
                digest.update(f"{r.file_name}\0{r.height}x{r.width}\0{anns}\0{hash_file(r.path)}\n".encode())
        return digest.hexdigest()


def _load(spec: DatasetSpec, name: str, console: Console | None) -> Dataset:
    from sskd_deploy.data.layout import load_dataset

    console = _console(console)
    return load_dataset(spec.kind, Path(spec.path), images=spec.images, split=spec.split, name=name,
                        log=lambda line: console.print(f"{name}: {line}", markup=False, soft_wrap=True))


def resolve_data(data_cfg: DataConfig, console: Console | None = None) -> DataSources:
    """Load (or generate) the datasets ``data_cfg`` names."""
    if data_cfg.labeled is None:
        return _synthetic_sources(Path(data_cfg.root), synth_params(data_cfg), console)
    from sskd_deploy.data.splits import split_by_file, split_by_fraction

    labeled, val = _load(data_cfg.labeled, "labeled", console), _load(data_cfg.val, "val", console)
    if data_cfg.unlabeled is not None:
        unlabeled = _load(data_cfg.unlabeled, "unlabeled", console)
    elif data_cfg.split is not None and data_cfg.split.split_file is not None:
        labeled, unlabeled = split_by_file(labeled, Path(data_cfg.split.split_file))
    elif data_cfg.split is not None and data_cfg.split.labeled_fraction is not None:
        labeled, unlabeled = split_by_fraction(labeled, data_cfg.split.labeled_fraction, seed=data_cfg.split.seed)
    else:
        raise DatasetError("config data", "no unlabeled set: name data.unlabeled or a data.split")
    if labeled.categories.names != val.categories.names:
        raise DatasetError(
            data_cfg.val.path, f"classes {val.categories.names} differ from the labeled set's {labeled.categories.names}"
        )
    specs = [data_cfg.labeled, data_cfg.val] + ([data_cfg.unlabeled] if data_cfg.unlabeled else [])
    paths = tuple(dict.fromkeys(Path(s.path) for s in specs))
    return DataSources(labeled, unlabeled, val, None, paths, origin="config")


def _synthetic_sources(root: Path, params: dict[str, Any], console: Console | None) -> DataSources:
    from sskd_deploy.data.layout import open_dataset_dir

    console = _console(console)
    manifest = ensure_synthetic(root, params, console)
    splits = open_dataset_dir(root, log=lambda line: console.print(line, markup=False, soft_wrap=True))
    roles = manifest["default_splits"]
    return DataSources(
        splits[roles["labeled"]], splits[roles["unlabeled"]], splits[roles["val"]],
        splits.get(roles.get("all_labels", "")), (root,), origin=f"synthetic:{root}",
    )
