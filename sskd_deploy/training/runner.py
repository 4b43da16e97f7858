"""``sskd-deploy train``: run the selected stages in order, skip finished ones, summarise.

Works the same in one process and under ``torchrun --nproc_per_node N`` (rank 0 evaluates,
pseudo-labels, writes files and prints; every rank trains its shard).
"""

from __future__ import annotations

import time
from typing import Any

from sskd_deploy.config import Config, dump_config
from sskd_deploy.config.layout import RunLayout
from sskd_deploy.config.train import STAGES
from sskd_deploy.io import atomic_write_json, atomic_write_text
from sskd_deploy.training.context import TrainContext, pick_device
from sskd_deploy.training.distributed import cleanup, init_from_env
from sskd_deploy.training.stages import RECIPES

SUMMARY_ROWS = (
    ("teacher_1a", "teacher, adapted on labels (1a)"),
    ("teacher_1b", "teacher, adapted with self-training (1b)"),
    ("student_2", "student after stage 2"),
    ("student_3", "student after stage 3"),
    ("supervised", "student, supervised only"),
)


def parse_stages(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """``"student_2,student_3"`` -> a tuple in pipeline order; unknown names are an error."""
    if not text:
        return default
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
    return tuple(s for s in STAGES if s in chosen)


def run_training(config: Config, *, data, stages: tuple[str, ...] | None = None, console: Any = None) -> dict:
    """Run ``stages`` (default: ``config.train.stages``) and return the summary dict."""
    rank, world_size, _ = init_from_env()
    layout = RunLayout.of(config).train
    root = layout.root
    ctx = TrainContext(config=config, data=data, root=root, device=pick_device(config.train.device),
                       console=console, rank=rank, world_size=world_size)
    if ctx.is_main:
        atomic_write_text(layout.config_file, dump_config(config))
    records, timings = {}, {}
    try:
        for stage in stages or config.train.stages:
            start = time.perf_counter()
            records[stage] = RECIPES[stage](ctx)
            timings[stage] = round(time.perf_counter() - start, 1)
    except BaseException:
        cleanup(synchronize=False)
        raise
    cleanup()
    summary = {"order": list(records), "stages": records, "wall_seconds": timings}
    if ctx.is_main:
        atomic_write_json(layout.summary, summary, indent=2)
        if console is not None:
            console.print(summary_table(records, timings))
    return summary


def summary_table(records: dict[str, dict], timings: dict[str, float]):
    from rich.table import Table

    table = Table(title="SSKD training summary (mask AP on the val split, through the deploy wrapper)")
    for column in ("model", "AP", "AP50", "steps", "wall s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    # the starting weights scored before training: the teacher (the paper's zero-shot VFM row) before 1a,
    # a whole pretrained student before the supervised baseline
    for stage, label in (("teacher_1a", "teacher, zero-shot (foundation model)"),
                         ("supervised", "student, zero-shot (pretrained whole)")):
        record = records.get(stage, {})
        if record.get("zero_shot_ap") is not None:
            ap50 = record.get("zero_shot_ap50")
            table.add_row(label, f"{100 * record['zero_shot_ap']:.1f}", "-" if ap50 is None else f"{100 * ap50:.1f}",
                          "0", "")
    for stage, label in SUMMARY_ROWS:
        record = records.get(stage)
        if record is None:
            continue
        ap, ap50 = record.get("ap"), record.get("ap50")
        if record.get("pseudo_labels") == "truth":
            label += " (truth as pseudo-labels)"
        table.add_row(label, "-" if ap is None else f"{100 * ap:.1f}", "-" if ap50 is None else f"{100 * ap50:.1f}",
                      str(record.get("steps", "")), str(timings.get(stage, "")))
    return table
