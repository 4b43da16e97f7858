"""The main job and the data commands, as library functions the CLI calls.

``run_pipeline`` is what the README's main command runs: on the embedded default it generates
the synthetic world (or reuses an identical one), validates it, summarises it and draws its
ground truth. Later stages (train, export, bench, report) append themselves here, each writing
into the run directory and recording itself in the run manifest.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sskd_deploy.errors import DatasetError, SSKDError
from sskd_deploy.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from rich.console import Console

    from sskd_deploy.config import Config
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
    path: Path, out: Path, *, split: str | None = None, num: int = 8, columns: int = 4, seed: int = 0
) -> Path:
    """``data show``: the ground truth of ``num`` images of a split (a seeded sample; seed < 0: the first)."""
    from sskd_deploy.data.layout import open_dataset_dir

    dataset = _default_split(open_dataset_dir(Path(path)), split, Path(path))
    count = min(num, len(dataset.records))
    if seed < 0:
        chosen = list(range(count))
    else:
        chosen = sorted(np.random.default_rng(seed).choice(len(dataset.records), count, replace=False).tolist())
    return draw_ground_truth(dataset, chosen, out, columns=columns)


def print_check_report(report: CheckReport, console: Console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"dataset check: {report.path}")
    table.add_column("split")
    keys = sorted({k for s in report.splits.values() for k in s})
    for key in keys:
        table.add_column(key, justify="right")
    for name, info in report.splits.items():
        table.add_row(name, *(str(info.get(k, "")) for k in keys))
    console.print(table)
    for problem in report.problems:
        console.print(f"[red]problem:[/red] {escape(problem)}", soft_wrap=True)
    verdict = "[green]ok[/green]" if report.ok else f"[red]{len(report.problems)} problem(s)[/red]"
    console.print(f"{verdict}: {report.path}", soft_wrap=True)


def run_pipeline(config: Config, *, console: Console) -> dict:
    """The main job. Returns (and writes) the run manifest ``<out_dir>/manifest.json``."""
    from sskd_deploy.config import config_hash, dump_config
    from sskd_deploy.data.sources import resolve_data
    from sskd_deploy.data.stats import dataset_statistics, format_statistics
    from sskd_deploy.provenance import environment, library_versions

    out = Path(config.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_config(config))
    steps: dict[str, dict] = {}

    start = time.perf_counter()
    data = resolve_data(config.data, console=console)
    steps["data"] = {"seconds": round(time.perf_counter() - start, 3), "source": data.describe()}

    start = time.perf_counter()
    reports = data.check()
    for report in reports:
        print_check_report(report, console)
    problems = [p for r in reports for p in r.problems]
    steps["check"] = {"seconds": round(time.perf_counter() - start, 3), "problems": len(problems)}
    if problems:
        raise SSKDError(f"{len(problems)} dataset problem(s) found; fix them or point the config elsewhere")

    stats = {role: dataset_statistics(ds) for role, ds in data.roles().items()}
    atomic_write_json(out / "data_statistics.json", stats, indent=2)
    for role, s in stats.items():
        console.print(f"[bold]{role}[/bold]\n{format_statistics(s)}")

    start = time.perf_counter()
    overlay = draw_ground_truth(data.val, list(range(min(8, len(data.val)))), out / "data_overlays.png")
    steps["overlays"] = {"seconds": round(time.perf_counter() - start, 3), "file": overlay.name}

    if "train" in config.run.steps:
        from sskd_deploy.training.runner import run_training

        start = time.perf_counter()
        summary = run_training(config, data=data, console=console)
        steps["train"] = {"seconds": round(time.perf_counter() - start, 1), "summary": "train/summary.json",
                          "stages": {k: {"ap": v.get("ap"), "ap50": v.get("ap50")}
                                     for k, v in summary["stages"].items()}}

    manifest = {
        "format": "sskd-deploy/run", "version": 1, "config_hash": config_hash(config),
        "data_hash": data.content_hash(), "steps": steps,
        "versions": library_versions(), "environment": environment(),
    }
    atomic_write_json(out / "manifest.json", manifest, indent=2)
    console.print(f"[green]done[/green]: run directory {out} (overlays: {overlay})")
    return manifest


def describe_model(
    name: str, *, input_size: tuple[int, int] | None, num_classes: int, iters: int, threads: int | None,
    json_out: Path | None, console: Console,
) -> dict:
    """``model info``: build a preset (or a checkpoint's config) with random weights and measure it."""
    from rich.table import Table

    from sskd_deploy.model_config import model_preset
    from sskd_deploy.models.info import model_info

    if Path(name).suffix in (".safetensors", ".pt", ".pth"):
        from sskd_deploy.models.checkpoint import read_checkpoint

        config = read_checkpoint(name).model_config
    else:
        config = model_preset(name).with_classes(num_classes)
    if input_size is not None:
        config = config.updated(input_size=input_size)
    info = model_info(config, iters=iters, threads=threads)
    table = Table(title=f"{info.name} at {info.input_size[0]}x{info.input_size[1]}, {config.num_classes} classes")
    table.add_column("part")
    table.add_column("parameters", justify="right")
    for part, count in info.parameters.items():
        table.add_row(part, f"{count / 1e6:.2f}M")
    console.print(table)
    latency = "skipped" if info.latency_ms is None else f"{info.latency_ms:.1f} ms ({info.threads} threads)"
    console.print(f"GFLOPs {info.gflops:.1f} (GMACs {info.gmacs:.1f}); CPU latency batch 1: {latency}")
    if json_out is not None:
        atomic_write_json(json_out, info.to_dict(), indent=2)
    return info.to_dict()


def train_command(config: Config, *, stages: str | None, console: Console) -> dict:
    """``train``: resolve (or generate) the data, then run the selected stages."""
    from sskd_deploy.data.sources import resolve_data
    from sskd_deploy.training.runner import parse_stages, run_training

    try:
        chosen = parse_stages(stages, tuple(config.train.stages))
    except ValueError as err:
        raise SSKDError(f"--stages: {err}") from None
    data = resolve_data(config.data, console=console)
    return run_training(config, data=data, stages=chosen, console=console)
