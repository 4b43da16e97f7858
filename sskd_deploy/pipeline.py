"""The main job and the data commands, as library functions the CLI calls.

``run_pipeline`` is what the README's main command runs: on the embedded default it generates
the synthetic world (or reuses an identical one), validates it, summarises it and draws its
ground truth, then runs the steps of ``run.steps`` in order (train, export, bench, report), each
writing into the run directory and recording itself in the run manifest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sskd_deploy.errors import DatasetError, SSKDError
from sskd_deploy.io import atomic_write_json, atomic_write_text, recorded_path

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


def print_check_report(report: CheckReport, console: Console) -> None:
    from rich.markup import escape
    from rich.table import Table

    if report.reading:
        console.print(f"{escape(str(report.path))} read as {escape(report.reading)}", soft_wrap=True)
    table = Table(title=f"dataset check: {report.path}")
    table.add_column("split")
    keys = sorted({k for s in report.splits.values() for k in s})
    for key in keys:
        table.add_column(key, justify="right")
    for name, info in report.splits.items():
        table.add_row(name, *(str(info.get(k, "")) for k in keys))
    if report.splits:
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

    export_dir = Path(config.export.out_dir) if config.export.out_dir else out / "export"
    if "export" in config.run.steps:
        start = time.perf_counter()
        exported = export_command(config, console=console)
        parity = exported.get("parity", {})
        # relative to the run directory when the artifact is inside it (the default), else absolute
        steps["export"] = {"seconds": round(time.perf_counter() - start, 1),
                           "artifact": recorded_path(export_dir / "manifest.json", out),
                           "parity_ok": parity.get("ok"),
                           "ap": {r["runner"]: r["ap"] for r in parity.get("rows", [])}}
        if parity and not parity["ok"]:
            raise SSKDError(f"export parity gate failed: see {export_dir / 'parity.md'}")

    if "bench" in config.run.steps:
        from sskd_deploy.pipeline_bench import main_job_bench

        start = time.perf_counter()
        artifact = export_dir if (export_dir / "manifest.json").is_file() else None
        benched = main_job_bench(config, artifact, console=console)
        steps["bench"] = {"seconds": round(time.perf_counter() - start, 1), "result": "bench/latency.json",
                          "triton": benched["triton"]}

    manifest = {
        "format": "sskd-deploy/run", "version": 1, "config_hash": config_hash(config),
        "data_hash": data.content_hash(), "steps": steps,
        "versions": library_versions(), "environment": environment(),
    }
    atomic_write_json(out / "manifest.json", manifest, indent=2)
    if "report" in config.run.steps:
        from sskd_deploy.report import build_report

        # last, so that it shows the manifest (and every step's time) just written
        start = time.perf_counter()
        report = build_report(out, log=console.print)
        manifest["steps"]["report"] = {"seconds": round(time.perf_counter() - start, 1), "file": report.name}
        atomic_write_json(out / "manifest.json", manifest, indent=2)
        console.print(f"[green]done[/green]: run directory {out}; report: [bold]{report}[/bold]")
    else:
        console.print(f"[green]done[/green]: run directory {out} (overlays: {overlay})")
    return manifest


def describe_model(
    name: str, *, input_size: tuple[int, int] | None, num_classes: int, iters: int, threads: int | None,
    json_out: Path | None, console: Console,
) -> dict:
    """``model info``: build a preset (or a checkpoint's config) with random weights and measure it."""
    from rich.table import Table

    from sskd_deploy.config.model import model_preset
    from sskd_deploy.models.info import model_info

    if name in GROUNDED_NAMES or (Path(name) / "grounding_dino").is_dir():
        return describe_grounded(name, console=console, json_out=json_out)
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


GROUNDED_NAMES = ("grounded-sam2", "grounded-sam2-l")


def describe_grounded(name: str, *, console: Console, json_out: Path | None) -> dict:
    """``model info grounded-sam2``: parameters of the real Grounding DINO (Swin-L) + SAM2.1 (Hiera-L)
    configurations (or of a weights directory), built with random weights, beside student-s."""
    import torch
    from rich.table import Table

    from sskd_deploy.config.model import model_preset
    from sskd_deploy.models.grounded_sam2 import count_directory_parameters, count_large_parameters
    from sskd_deploy.models.info import count_parameters
    from sskd_deploy.models.maskformer import build_model

    counts = count_large_parameters() if name in GROUNDED_NAMES else count_directory_parameters(Path(name))
    label = "Grounding DINO Swin-L + SAM2.1 Hiera-L" if name in GROUNDED_NAMES else str(name)
    student_config = model_preset("student-s").with_classes(8).updated(encoder={"weights": None})
    with torch.device("meta"):
        student = count_parameters(build_model(student_config))
    ratio = counts["total"] / student["total"]
    table = Table(title=f"teacher {label} (random weights) beside student-s")
    table.add_column("part")
    table.add_column("parameters", justify="right")
    for part, count in counts.items():
        table.add_row(f"teacher {part}", f"{count / 1e6:.2f}M")
    table.add_row("student-s total", f"{student['total'] / 1e6:.2f}M")
    console.print(table)
    console.print(f"teacher / student-s = {ratio:.1f}x (paper: 568M / 52M, about 10.9x)")
    result = {"name": name, "teacher": counts, "student": {"name": "student-s", **student},
              "ratio": round(ratio, 3)}
    if json_out is not None:
        atomic_write_json(json_out, result, indent=2)
    return result


def profile_training_step(config: Config, *, role: str, steps: int, warmup: int, batch_size: int | None,
                          threads: int | None, json_out: Path | None, console: Console) -> dict:
    """``model profile``: time the phases of the run's training step and print them as a table."""
    import torch
    from rich.table import Table

    from sskd_deploy.data.sources import resolve_data
    from sskd_deploy.training.context import TrainContext, pick_device
    from sskd_deploy.training.profile import profile_steps

    if role not in ("student", "teacher"):
        raise SSKDError(f"--role must be student or teacher, got {role!r}")
    from sskd_deploy.config.model import PRESETS

    if role == "teacher" and config.train.teacher not in PRESETS:
        raise SSKDError(f"--role teacher profiles a MaskFormer teacher preset; train.teacher is {config.train.teacher!r}")
    if threads:
        torch.set_num_threads(threads)
    data = resolve_data(config.data, console=console)
    ctx = TrainContext(config=config, data=data, root=Path(config.run.out_dir) / "train",
                       device=pick_device(config.train.device), console=console)
    try:
        profile = profile_steps(ctx, role=role, steps=steps, warmup=warmup, batch_size=batch_size)
    except ValueError as err:
        raise SSKDError(f"model profile: {err}") from None
    table = Table(title=f"{role} training step: batch {profile.batch_size}, {profile.threads} threads, "
                        f"{profile.device}, mean of {profile.steps} steps")
    for column in ("phase", "ms", "share"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase, ms in profile.ms.items():
        table.add_row(phase, f"{ms:.1f}", f"{100 * ms / profile.total_ms:.0f} %")
    table.add_row("[bold]total[/bold]", f"{profile.total_ms:.1f}", f"{1000 * profile.batch_size / profile.total_ms:.1f} img/s")
    console.print(table)
    result = profile.to_dict()
    if json_out is not None:
        atomic_write_json(json_out, result, indent=2)
    return result


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


def latest_student(config: Config) -> Path:
    """The checkpoint ``export`` takes by default: stage 3 of the run, else stage 2 (with a warning)."""
    import json
    import warnings

    root = Path(config.run.out_dir) / "train"
    for stage in ("student_3", "student_2"):
        marker = root / stage / "complete.json"
        if marker.is_file():
            if stage == "student_2":
                warnings.warn(f"{root / 'student_3'} has not completed; exporting the stage-2 student", stacklevel=2)
            return root / stage / json.loads(marker.read_text())["checkpoint"]
    raise SSKDError(f"no trained student in {root} (stage student_3 or student_2 complete): run "
                    "`sskd-deploy train` first, or name a checkpoint with --checkpoint / export.checkpoint")


def check_checkpoint_matches(checkpoint: Path, config: Config, class_names: tuple[str, ...]) -> None:
    """The checkpoint's IOSpec must fit the data and input size the config describes."""
    from sskd_deploy.errors import InputError
    from sskd_deploy.models.checkpoint import read_checkpoint

    spec = read_checkpoint(checkpoint).spec
    problems = []
    if tuple(spec.class_names) != tuple(class_names):
        problems.append(f"classes {list(spec.class_names)} but the config's data has {list(class_names)}")
    wanted = config.train.input_size
    if wanted is not None and tuple(spec.input_size) != tuple(wanted):
        problems.append(f"input_size {list(spec.input_size)} but train.input_size is {list(wanted)}")
    if problems:
        raise InputError(checkpoint, "IOSpec disagrees with the config: " + "; ".join(problems))


def _export_request(config: Config, *, console: Console, overwrite: bool, recalibrate: bool):
    from sskd_deploy.data.sources import resolve_data
    from sskd_deploy.export.artifact import ExportRequest

    data = resolve_data(config.data, console=console)
    checkpoint = Path(config.export.checkpoint) if config.export.checkpoint else latest_student(config)
    check_checkpoint_matches(checkpoint, config, tuple(data.labeled.categories.names))
    calib = config.export.calibration.images
    source = Path(calib) if calib is not None else [r.path for r in data.unlabeled.records]
    out = Path(config.export.out_dir) if config.export.out_dir else Path(config.run.out_dir) / "export"
    return ExportRequest(checkpoint=checkpoint, out_dir=out, config=config.export, val=data.val,
                         calibration_source=source, cache_dir=Path(config.run.out_dir) / "cache" / "calibration",
                         recalibrate=recalibrate, overwrite=overwrite)


def export_command(config: Config, *, console: Console, overwrite: bool = True, recalibrate: bool = False) -> dict:
    """``export``: checkpoint -> artifact directory (ONNX FP32/FP16/INT8, engines, manifest, parity)."""
    from sskd_deploy.export.artifact import export_artifact

    req = _export_request(config, console=console, overwrite=overwrite, recalibrate=recalibrate)
    console.print(f"exporting {req.checkpoint} -> {req.out_dir}")
    manifest = export_artifact(req, log=console.print)
    if "parity" in manifest:
        print_parity(manifest["parity"], console)
    console.print(f"[green]wrote[/green] {req.out_dir} ({manifest['export_seconds']} s)")
    return manifest


def verify_command(artifact_dir: Path, config: Config, *, console: Console, split: str = "val",
                   triton: str | None = None, triton_model: str | None = None) -> dict:
    """``verify``: the parity gate on a finished artifact directory, on the config's val (or labeled) split;
    with ``triton``, the served model against the same graph in-process."""
    from sskd_deploy.data.sources import resolve_data
    from sskd_deploy.export.artifact import read_manifest, verify_artifact

    if split not in ("val", "labeled"):
        raise SSKDError(f"--split: expected val or labeled, got {split!r}")
    read_manifest(Path(artifact_dir))  # a wrong directory is named before any data is read
    data = resolve_data(config.data, console=console)
    dataset = data.val if split == "val" else data.labeled
    if triton is not None:
        from sskd_deploy.pipeline_serve import verify_triton

        report = verify_triton(Path(artifact_dir), triton, triton_model, dataset, config, console=console,
                               report_name="parity_triton" if split == "val" else f"parity_triton_{split}")
        print_parity(report, console)
        return report
    report = verify_artifact(Path(artifact_dir), dataset, config=config.export, log=console.print,
                             report_name="parity" if split == "val" else f"parity_{split}")
    print_parity(report, console)
    return report


def print_parity(report: dict, console: Console) -> None:
    from rich.markup import escape
    from rich.table import Table

    from rich import box

    table = Table(title=f"parity on {report['split']} ({report['images']} images); AP in points", box=box.SIMPLE,
                  pad_edge=False)
    for column in ("runner", "AP", "AP50", "drop", "max|dscore|", "agree", "verdict"):
        table.add_column(column, justify="left" if column in ("runner", "verdict") else "right", no_wrap=True,
                         min_width=16 if column == "runner" else max(len(column), 6))

    def fmt(value, digits=2):
        return "n/a" if value is None else f"{value:.{digits}f}"

    for row in report["rows"]:
        t, d = row.get("tensors", {}), row.get("decisions", {})
        verdict = "ref" if "ok" not in row else ("[green]pass[/green]" if row["ok"] else "[red]FAIL[/red]")
        table.add_row(row["runner"], fmt(row["ap"]), fmt(row["ap50"]), fmt(row.get("ap_drop"), 3),
                      fmt(t.get("max_abs_score_diff"), 5), fmt(d.get("agreement"), 3), verdict)
    console.print(table)
    providers = ", ".join(f"{r['runner']}: {r['provider'] or r['backend']}" for r in report["rows"])
    console.print(f"providers: {providers}. "
                  "'agree': detections above 0.5 matched by label and mask IoU >= 0.5.", soft_wrap=True)
    for skipped in report.get("skipped", []):
        console.print(escape(f"skipped {skipped['runner']}: {skipped['reason']}"), soft_wrap=True)
