"""``sskd-deploy export`` and ``verify``: a trained student to an artifact directory, and the parity
gate on a finished one (with ``verify --triton``, the served model against the same graph in-process).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sskd_deploy.commands.tables import print_parity
from sskd_deploy.config.layout import COMPLETE, PARITY, PARITY_TRITON, RunLayout
from sskd_deploy.errors import SSKDError

if TYPE_CHECKING:
    from rich.console import Console

    from sskd_deploy.config import Config


def latest_student(config: Config) -> Path:
    """The checkpoint ``export`` takes by default: stage 3 of the run, else stage 2 (with a warning)."""
    import json
    import warnings

    layout = RunLayout.of(config)
    root = layout.train_dir
    for stage in ("student_3", "student_2"):
        marker = layout.stage_file(stage, COMPLETE)
        if marker.is_file():
            if stage == "student_2":
                warnings.warn(f"{layout.stage_dir('student_3')} has not completed; exporting the stage-2 student",
                              stacklevel=2)
            return layout.stage_file(stage, json.loads(marker.read_text())["checkpoint"])
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
    layout = RunLayout.of(config)
    return ExportRequest(checkpoint=checkpoint, out_dir=layout.export_dir, config=config.export, val=data.val,
                         calibration_source=source, cache_dir=layout.calibration_cache,
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
        from sskd_deploy.commands.serve import verify_triton

        report = verify_triton(Path(artifact_dir), triton, triton_model, dataset, config, console=console,
                               report_name=PARITY_TRITON if split == "val" else f"{PARITY_TRITON}_{split}")
        print_parity(report, console)
        return report
    report = verify_artifact(Path(artifact_dir), dataset, config=config.export, log=console.print,
                             report_name=PARITY if split == "val" else f"{PARITY}_{split}")
    print_parity(report, console)
    return report
