"""The summary of one ``scripts/gpu_check.sh`` run: training speed, every latency row, the pairs.

The script leaves one folder per step (``train_<name>/`` run directories, ``bench_<name>/latency.json``,
a ``.log`` per step and ``steps.tsv`` with each step's exit status and seconds). This module reads
whatever is there, including the rows of a bench step stopped by its time limit
(``latency.partial.jsonl``), and writes ``summary.json`` and ``summary.md`` beside them::

    python -m sskd_deploy.bench.gpu_check OUT_DIR
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from sskd_deploy.config.layout import LATENCY, METRICS, TRAIN, partial_rows
from sskd_deploy.io import atomic_write_json, atomic_write_text

PAPER = {"teacher_ms": 350.9, "student_ms": 76.9, "speedup": 4.56, "teacher_gflops": 880, "student_gflops": 200}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_summary(run_dir: Path) -> dict[str, Any] | None:
    """Samples/s (median over the logged windows after the first, which holds start-up) and peak CUDA memory."""
    files = sorted(run_dir.glob(f"{TRAIN}/*/{METRICS}"))
    if not files:
        return None
    records = [r for r in _jsonl(files[-1]) if "step_seconds" in r]
    if not records:
        return {"stage": files[-1].parent.name, "steps": 0}
    steady = records[1:] or records
    speeds = [r["samples_per_second"] for r in steady if r.get("samples_per_second")]
    peaks = [r["cuda_peak_mib"] for r in records if r.get("cuda_peak_mib") is not None]
    return {"stage": files[-1].parent.name, "steps": records[-1]["step"],
            "samples_per_second": statistics.median(speeds) if speeds else None,
            "cuda_peak_mib": max(peaks) if peaks else None, "seconds": records[-1].get("seconds"),
            "final_loss": records[-1].get("loss")}


def bench_summary(folder: Path) -> dict[str, Any] | None:
    """The rows and pairs of one bench step; ``complete`` is False when only the partial rows exist."""
    full = folder / LATENCY
    partial = partial_rows(full)
    if full.is_file():
        result = json.loads(full.read_text())
        return {"complete": True, "rows": result["rows"], "pairs": result["pairs"], "skipped": result["skipped"],
                "peaks": result.get("peaks", {})}
    if partial.is_file():
        return {"complete": False, "rows": _jsonl(partial), "pairs": [], "skipped": [], "peaks": {}}
    return None


def _steps(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / "steps.tsv"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        name, status, seconds = (line.split("\t") + ["", ""])[:3]
        steps.append({"step": name, "status": status, "seconds": float(seconds) if seconds else None})
    return steps


def summarise(out_dir: Path) -> dict[str, Any]:
    out_dir = Path(out_dir)
    summary: dict[str, Any] = {"steps": _steps(out_dir), "training": {}, "bench": {}, "paper": PAPER}
    for run in sorted(out_dir.glob("train_*")):
        summary["training"][run.name.removeprefix("train_")] = training_summary(run)
    for folder in sorted(out_dir.glob("bench_*")):
        result = bench_summary(folder)
        if result is not None:
            summary["bench"][folder.name.removeprefix("bench_")] = result
    atomic_write_json(out_dir / "summary.json", summary, indent=2)
    atomic_write_text(out_dir / "summary.md", summary_markdown(summary))
    return summary


def _f(value: Any, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = ["# GPU check", "", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['status']} | {_f(s['seconds'])} |" for s in summary["steps"]]
    lines += ["", "## Training", "", "| run | stage | steps | samples/s | peak CUDA MiB | loss |", "|---|---|---|---|---|---|"]
    for name, t in summary["training"].items():
        if t:
            lines.append(f"| {name} | {t['stage']} | {t['steps']} | {_f(t.get('samples_per_second'))} | "
                         f"{_f(t.get('cuda_peak_mib'), 0)} | {_f(t.get('final_loss'), 3)} |")
    lines += ["", "## Latency (infer p50, ms)", "",
              "| step | model | runner | batch | p50 ms | img/s | compile s | AP drop |", "|---|---|---|---|---|---|---|---|"]
    for step, result in summary["bench"].items():
        for r in result["rows"]:
            lines.append(f"| {step}{'' if result['complete'] else ' (partial)'} | {r['model']} | {r['runner']} | "
                         f"{r['batch']} | {_f(r['p50_ms'], 2)} | {_f(r.get('throughput_ips'))} | "
                         f"{_f(r.get('compile_s'))} | {_f(r.get('ap_drop'), 2)} |")
    pairs = [p for result in summary["bench"].values() for p in result["pairs"]]
    if pairs:
        lines += ["", "## Teacher -> student (batch 1)", "",
                  "| teacher | student | runner | teacher ms | student ms | speed-up | teacher split (ms) |",
                  "|---|---|---|---|---|---|---|"]
        for p in pairs:
            split = ", ".join(f"{k} {v:.1f}" for k, v in p.get("teacher_stages_ms", {}).items())
            lines.append(f"| {p['teacher']} | {p['student']} | {p['runner']} | {_f(p['teacher_p50_ms'])} | "
                         f"{_f(p['student_p50_ms'])} | {_f(p['speedup'], 2)}x | {split} |")
        lines.append(f"\nPaper: {PAPER['teacher_ms']} -> {PAPER['student_ms']} ms, {PAPER['speedup']}x.")
    skipped = [f"- {step}: {s['model']} / {s['runner']}: {s['reason']}" for step, result in summary["bench"].items()
               for s in result["skipped"]]
    if skipped:
        lines += ["", "## Skipped rows", "", *skipped]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m sskd_deploy.bench.gpu_check OUT_DIR (a gpu_check.sh output folder)", file=sys.stderr)
        return 2
    summarise(Path(args[0]))
    print((Path(args[0]) / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
