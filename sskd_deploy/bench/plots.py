"""The benchmark's pictures: latency/throughput per batch size with the stage split, and a roofline.

Both read only the result rows, so a JSON written earlier can be re-plotted.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from sskd_deploy.io import atomic_write_bytes


def _figure_bytes(fig) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _by_model(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["model"]].append(row)
    return groups


def _throughput_panel(ax, model: str, group: list[dict[str, Any]]) -> None:
    for runner in dict.fromkeys(r["runner"] for r in group):
        points = sorted((r["batch"], r["throughput_ips"]) for r in group if r["runner"] == runner)
        ax.plot([b for b, _ in points], [t for _, t in points], marker="o", label=runner)
    ax.set(title=f"{model}: inference throughput", xlabel="batch size", ylabel="images / s")
    ax.set_xticks(sorted({r["batch"] for r in group}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _stage_panel(ax, model: str, group: list[dict[str, Any]]) -> None:
    smallest = min(r["batch"] for r in group)
    first = [r for r in group if r["batch"] == smallest]
    left = [0.0] * len(first)
    for stage, key, color in (("pre", "pre_ms", "#8fb3d9"), ("infer", "p50_ms", "#2b6cb0"),
                              ("post", "post_ms", "#f6ad55")):
        values = [(r[key]["p50"] if isinstance(r.get(key), dict) else r.get(key)) or 0.0 for r in first]
        ax.barh([r["runner"] for r in first], values, left=left, color=color, label=stage)
        left = [a + v for a, v in zip(left, values)]
    ax.set(title=f"{model}: p50 per call at batch {smallest}", xlabel="ms")
    ax.legend(fontsize=7)
    ax.invert_yaxis()


def _pair_panel(ax, pairs: list[dict[str, Any]]) -> None:
    labels = [f"{p['teacher']} / {p['student']}\n{p['runner']}" for p in pairs]
    y = range(len(pairs))
    ax.barh([i - 0.2 for i in y], [p["teacher_p50_ms"] for p in pairs], height=0.4, label="teacher", color="#c05621")
    ax.barh([i + 0.2 for i in y], [p["student_p50_ms"] for p in pairs], height=0.4, label="student", color="#2b6cb0")
    for i, p in zip(y, pairs):
        ax.annotate(f"{p['speedup']:.2f}x", (p["teacher_p50_ms"], i - 0.2), fontsize=8, va="center",
                    xytext=(4, 0), textcoords="offset points")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.set(title="teacher vs student, same input size, batch 1 (p50)", xlabel="ms")
    ax.legend(fontsize=7)
    ax.invert_yaxis()


def plot_latency(rows: list[dict[str, Any]], pairs: list[dict[str, Any]], out: Path) -> Path:
    """Per model: throughput vs batch size per runner and pre/infer/post at the smallest batch; then the pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _by_model([r for r in rows if not r.get("pair_role")])
    count = len(groups) + (1 if pairs else 0)
    fig, axes = plt.subplots(count, 2, figsize=(12, 3.6 * count), squeeze=False)
    for (model, group), (left, right) in zip(groups.items(), axes):
        _throughput_panel(left, model, group)
        _stage_panel(right, model, group)
    if pairs:
        _pair_panel(axes[-1][0], pairs)
        axes[-1][1].axis("off")
    fig.tight_layout()
    atomic_write_bytes(out, _figure_bytes(fig))
    return out


def plot_roofline(rows: list[dict[str, Any]], peaks: dict[str, dict[str, Any]], out: Path) -> Path:
    """Measured ceilings (compute peaks, memory bandwidth) and every row at its arithmetic intensity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(9, 5.5))
    points = [r for r in rows if r.get("intensity") and r.get("achieved_gflops")]
    lo = min([r["intensity"] for r in points] + [1.0]) / 2
    hi = max([r["intensity"] for r in points] + [1e3]) * 2
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    styles = {"fp32": "-", "int8": "--", "fp16": "-.", "bf16": ":", "tf32": (0, (1, 3))}
    for device, table in peaks.items():
        bandwidth = table.get("memory_gbps")
        for key, value in table.items():
            if not key.endswith(("_gflops", "_gops")) or not isinstance(value, (int, float)) or not bandwidth:
                continue
            name = key.split("_")[0]
            ax.plot(x, np.minimum(value, bandwidth * x), linestyle=styles.get(name, "-"), color="grey", linewidth=1)
            ax.annotate(f"{device} {name} {value:,.0f} G/s", (hi, value), fontsize=7, ha="right", va="bottom")
    markers = dict(zip(sorted({r["model"] for r in points}), "os^Dvp*"))
    for runner in dict.fromkeys(r["runner"] for r in points):
        mine = [r for r in points if r["runner"] == runner]
        for model in dict.fromkeys(r["model"] for r in mine):
            subset = [r for r in mine if r["model"] == model]
            ax.scatter([r["intensity"] for r in subset], [r["achieved_gflops"] for r in subset],
                       marker=markers.get(model, "o"), label=f"{runner} / {model}", s=22)
    ax.set(xscale="log", yscale="log", xlabel="FLOPs per byte (weights once + input/output per call)",
           ylabel="achieved GFLOP/s (GOP/s for INT8)", title="roofline: measured ceilings, each runner and batch size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    atomic_write_bytes(out, _figure_bytes(fig))
    return out
