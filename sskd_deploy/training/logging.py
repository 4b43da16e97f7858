"""What a training run shows and leaves behind: ``metrics.jsonl``, a rich progress bar, curves PNG.

``metrics.jsonl`` holds one JSON object per log step: ``{"step", "epoch", "lr", "lr_<group>",
"seconds" (training wall time so far, resumes included), "step_seconds", "samples_per_second",
["cuda_peak_mib" (on CUDA: peak allocated memory so far)], <loss term>: float or
null, ...}``; loss terms are means over the steps since the previous line (and over ranks).
Validation adds lines ``{"step", "epoch", "seconds", "eval_seconds", "val_ap", "val_ap50",
["train_ap", "train_ap50"]}`` (mask AP in points) every ``train.eval_every`` steps and at the end.
Only rank 0 creates these objects.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from sskd_deploy.io import atomic_write_bytes, atomic_write_text
from sskd_deploy.training.distributed import gather_objects

# keys of a metrics line that are bookkeeping, not curves
NOT_PLOTTED = frozenset({"step", "epoch", "seconds", "step_seconds", "eval_seconds", "samples_per_second",
                         "cuda_peak_mib"})
# validation lines (train.eval_every) carry mask AP in points under keys ending in this; one panel
AP_SUFFIX = "_ap"


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN/inf: undefined diagnostics are written as ``null``."""
    return float(value) if math.isfinite(value) else None


class MetricsLog:
    """Append-only JSONL writer that survives resumes without duplicate steps.

    Opening it keeps only the lines with ``step <= keep_until`` (the step the run resumes from,
    0 for a fresh run), so lines written after the last checkpoint by an interrupted run are
    dropped and then rewritten by the resumed one.
    """

    def __init__(self, *, path: Path, keep_until: int) -> None:
        self.path = Path(path)
        kept = [line for line in self._lines() if self._step(line) <= keep_until]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def _lines(self) -> list[str]:
        if not self.path.is_file():
            return []
        return [line for line in self.path.read_text().splitlines() if line.strip()]

    @staticmethod
    def _step(line: str) -> float:
        """The line's step; a line cut short by a kill mid-append counts as past every checkpoint."""
        try:
            return json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return math.inf

    def write(self, record: dict[str, Any]) -> None:
        self.append(self.path, record)

    @staticmethod
    def append(path: Path, record: dict[str, Any]) -> None:
        with Path(path).open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")


class StepWindow:
    """Running sums of each term since the last log line; :meth:`flush` averages them over ranks."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.seconds: list[float] = []

    def add(self, values: dict[str, float], seconds: float) -> None:
        for name, value in values.items():
            if math.isfinite(value):  # undefined diagnostics (nan) do not drag the mean
                self.sums[name] = self.sums.get(name, 0.0) + value
                self.counts[name] = self.counts.get(name, 0) + 1
            else:
                self.sums.setdefault(name, 0.0)
                self.counts.setdefault(name, 0)
        self.seconds.append(seconds)

    def flush(self) -> dict[str, float | None]:
        """``{term: mean over steps and ranks (None if never finite)}`` plus ``step_seconds``; resets.

        Collective under DDP (all ranks must call it at the same step).
        """
        local = {"sums": self.sums, "counts": self.counts, "seconds": self.seconds}
        ranks = gather_objects(local)
        names = sorted({n for r in ranks for n in r["sums"]})
        means: dict[str, float | None] = {}
        for name in names:
            count = sum(r["counts"].get(name, 0) for r in ranks)
            means[name] = sum(r["sums"].get(name, 0.0) for r in ranks) / count if count else None
        seconds = [s for r in ranks for s in r["seconds"]]
        means["step_seconds"] = round(sum(seconds) / max(1, len(seconds)), 4)
        self.__init__()
        return means


class ProgressBar:
    """A rich bar with the loss terms and ETA; does nothing when ``console`` is ``None``."""

    def __init__(self, *, console: Any, total: int, completed: int, description: str = "train") -> None:
        self.progress = None
        if console is None:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[terms]}"), console=console,
        )
        self.task = self.progress.add_task(description, total=total, completed=completed, terms="")
        self.progress.start()

    def update(self, *, completed: int, terms: dict[str, float]) -> None:
        if self.progress is None:
            return
        text = " ".join(f"{k} {v:.4g}" for k, v in terms.items() if math.isfinite(v))
        self.progress.update(self.task, completed=completed, terms=text)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def read_metrics(metrics_jsonl: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]


def append_final_eval(metrics_jsonl: Path, step: int, values: dict[str, float], seconds: float) -> None:
    """Add the stage's final validation as the curve's last point (once, even when a stage is finished twice)."""
    records = read_metrics(metrics_jsonl)
    if any(r.get("step") == step and "val_ap" in r for r in records):
        return
    last = records[-1] if records else {}
    MetricsLog.append(metrics_jsonl, {"step": step, "epoch": last.get("epoch"), "seconds": last.get("seconds"),
                                      "eval_seconds": round(seconds, 2), **values})


def plot_curves(metrics_jsonl: Path, out_png: Path) -> Path:
    """One subplot per logged curve (loss terms, diagnostics, ``lr``) against the step; PNG, atomic.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(metrics_jsonl)
    names = sorted({k for r in records for k in r if k not in NOT_PLOTTED and not k.startswith("lr_")})
    ap_names = [n for n in names if n.endswith(AP_SUFFIX)]
    names = ([n for n in names if n == "loss"] + (["mask AP"] if ap_names else [])
             + [n for n in names if n not in ("loss", "lr") and n not in ap_names] + [n for n in names if n == "lr"])
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    figure = Figure(figsize=(4 * cols, 2.8 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    for i, name in enumerate(names):
        ax = figure.add_subplot(rows, cols, i + 1)
        for curve in ap_names if name == "mask AP" else [name]:
            points = [(r["step"], r[curve]) for r in records if r.get(curve) is not None]
            style = {"marker": "o", "markersize": 3, "label": curve} if name == "mask AP" else {}
            ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1.2, **style)
        if name == "mask AP":
            ax.legend(fontsize=7)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if not names:
        figure.add_subplot(1, 1, 1).text(0.5, 0.5, f"no metrics in {Path(metrics_jsonl).name}", ha="center")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return atomic_write_bytes(out_png, buffer.getvalue())
