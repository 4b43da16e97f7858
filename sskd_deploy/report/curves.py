"""Training curves of every stage in one figure, drawn from the stages' ``metrics.jsonl``.

One figure with a panel per loss term lets a reader compare stages at a glance (the stage-2
student should end below the supervised baseline on L_sup); the per-stage ``curves.png`` that
training writes is only the fallback when a log cannot be read.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from sskd_deploy.config.layout import CURVES, METRICS
from sskd_deploy.report.html import Markup, figure, missing, note, number
from sskd_deploy.report.runfiles import RunFiles, read_jsonl

# The objective J = L_sup + lambda_semi L_semi + lambda_pxl L_pxl, one panel a term, then the
# validation AP logged during training (train.eval_every; dashed: the labeled training images).
PANELS = (("loss", "total loss J"), ("sup", "L_sup (labels)"), ("semi", "L_semi (pseudo-labels)"),
          ("pxl", "L_pxl (pixel contrastive)"), ("val_ap", "mask AP during training (points)"))
DASHED = {"val_ap": "train_ap"}  # drawn dashed in the same panel
# Fixed colours per stage, so a stage keeps its colour whichever stages a run has.
STAGE_COLOURS = {"teacher_1a": "#1f77b4", "teacher_1b": "#17becf", "student_2": "#d62728",
                 "student_3": "#ff7f0e", "supervised": "#7f7f7f"}


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(number(r.get("step")), number(r.get(key))) for r in records]
    points = [(s, v) for s, v in points if s is not None and v is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_losses(metrics: dict[str, list[dict[str, Any]]]) -> bytes:
    """PNG of one panel per term of J, a line per stage that logs it (matplotlib's Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 7), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (key, title) in enumerate(PANELS):
        ax = fig.add_subplot(2, 3, i + 1)
        drawn = 0
        for stage, records in metrics.items():
            steps, values = _series(records, key)
            marker = {"marker": "o", "markersize": 3} if key in DASHED else {}
            if steps:
                ax.plot(steps, values, label=stage, color=STAGE_COLOURS.get(stage), linewidth=1.4, **marker)
                drawn += 1
            steps, values = _series(records, DASHED.get(key, ""))
            if steps:
                ax.plot(steps, values, label=f"{stage} (train images)", color=STAGE_COLOURS.get(stage),
                        linewidth=1.0, linestyle="--", **marker)
        if drawn:
            ax.legend(fontsize=8, frameon=False)
        else:
            ax.text(0.5, 0.5, "not logged by any stage", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def curve_parts(run: RunFiles, stages: Sequence[str]) -> list[Markup]:
    """The combined figure for every stage whose log reads, then each other stage's own curves.png."""
    metrics: dict[str, list[dict[str, Any]]] = {}
    fallbacks: list[Markup] = []
    for stage in stages:
        log = run.layout.stage_file(stage, METRICS)
        records = read_jsonl(log)
        if records and _series(records, "loss")[0]:
            metrics[stage] = records
            continue
        png = run.png(run.layout.stage_file(stage, CURVES))
        if png is None:
            fallbacks.append(missing(run.layout.shown(log), f"train --stages {stage}"))
        else:
            fallbacks.append(figure(png, caption=f"{stage}: {CURVES} written by training "
                                                 f"(its {METRICS} is missing or unreadable)"))
    parts: list[Markup] = []
    if metrics:
        caption = f"Loss terms against the optimiser step, {len(metrics)} stage(s), from {METRICS}"
        parts.append(figure(plot_losses(metrics), caption=caption, alt="training curves"))
    elif not fallbacks:
        parts.append(note("no training stages found"))
    return parts + fallbacks
