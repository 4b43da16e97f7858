"""``sskd-deploy model info`` and ``model profile``: a model's size, cost and speed, and where a training
step's time goes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sskd_deploy.errors import SSKDError
from sskd_deploy.io import atomic_write_json

if TYPE_CHECKING:
    from rich.console import Console

    from sskd_deploy.config import Config


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

    from sskd_deploy.config.layout import RunLayout
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
    ctx = TrainContext(config=config, data=data, root=RunLayout.of(config).train_dir,
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
