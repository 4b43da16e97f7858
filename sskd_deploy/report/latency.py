"""The latency section: the bench's per-runner timings, the teacher/student pair, Triton under load.

Everything comes from ``bench/latency.json`` (format ``sskd-deploy/bench``); any number in it may
be null and reads as a dash. The paper's efficiency claim sits under the pair table because that
is the comparison a reader makes anyway, with its hardware left unstated as in the paper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sskd_deploy.config.layout import BENCH
from sskd_deploy.report.html import DASH, Section, figure, fmt, missing, note, section, table, tag
from sskd_deploy.report.runfiles import RunFiles, mapping, objects

# METHOD.md section 5, "Efficiency": teacher -> student, hardware unstated.
PAPER_PAIR = ["paper: adapted VFM teacher", "paper: student", DASH, "hardware unstated", DASH, "350.9", "76.9",
              "4.56x", "880", "200"]
PEAK_KEYS = (("fp32_gflops", "FP32 GFLOP/s"), ("fp16_gflops", "FP16 GFLOP/s"), ("bf16_gflops", "BF16 GFLOP/s"),
             ("int8_gops", "INT8 GOP/s"), ("memory_gbps", "memory GB/s"))


def _at(row: dict[str, Any], key: str, stat: str) -> object:
    """``row[key][stat]`` for the nested timing dicts (pre_ms, post_ms, e2e_ms); None when absent."""
    value = row.get(key)
    return value.get(stat) if isinstance(value, dict) else None


def _latency_table(rows: list[dict[str, Any]]) -> object:
    cells = [[r.get("model", DASH), r.get("runner", DASH), r.get("precision", DASH), fmt(r.get("batch"), 0), fmt(r.get("p50_ms"), 2),
              fmt(r.get("p90_ms"), 2), fmt(r.get("p99_ms"), 2), fmt(_at(r, "pre_ms", "p50"), 2),
              fmt(_at(r, "post_ms", "p50"), 2), fmt(_at(r, "e2e_ms", "p50"), 2), fmt(r.get("throughput_ips"), 1),
              fmt(r.get("e2e_throughput_ips"), 1), fmt(r.get("peak_fraction"), 1, scale=100),
              r.get("peak_name") or DASH, fmt(r.get("speedup_vs_torch-fp32"), 2, suffix="x")] for r in rows]
    headers = ["model", "runner", "ran in", "batch", "p50 ms", "p90 ms", "p99 ms", "pre p50", "post p50", "e2e p50",
               "img/s", "e2e img/s", "% peak", "peak", "vs torch"]
    caption = ("p50/p90/p99 and img/s time the inference call alone; pre/post are host preprocessing and "
               "postprocessing, e2e all three; % peak is achieved over measured peak compute")
    return table(headers, cells, align="lllrrrrrrrrrrlr", caption=caption)


def _profile_parts(profiles: dict[str, Any]) -> list[object]:
    """One table per ``bench --profile`` runner: its top op types and nodes by time at batch 1."""
    parts: list[object] = []
    for name, prof in profiles.items():
        if not isinstance(prof, dict):
            continue
        parts.append(tag("h3", f"Top ops: {name}"))
        types = [[r.get("op_type", DASH), fmt(r.get("ms"), 2), fmt(r.get("percent"), 1), fmt(r.get("count"), 0)]
                 for r in prof.get("by_op_type", []) if isinstance(r, dict)]
        parts.append(table(["op type", "ms", "%", "count"], types, align="lrrr",
                           caption=f"{fmt(prof.get('total_ms'), 1)} ms of kernels per call at batch "
                                   f"{prof.get('batch', DASH)}, {prof.get('backend', DASH)} profiler "
                                   f"({prof.get('file', DASH)})"))
        nodes = [[r.get("name", DASH), r.get("op_type", DASH), fmt(r.get("ms"), 2), fmt(r.get("percent"), 1)]
                 for r in prof.get("top_nodes", []) if isinstance(r, dict)]
        parts.append(table(["node", "op type", "ms", "%"], nodes, align="llrr", caption="Slowest nodes"))
    return parts


def _peaks_table(peaks: dict[str, Any]) -> object:
    rows = [[device, *(fmt(values.get(key), 1) for key, _ in PEAK_KEYS)]
            for device, values in peaks.items() if isinstance(values, dict)]
    return table(["device", *(label for _, label in PEAK_KEYS)], rows, align="lrrrrr",
                 caption="Measured peaks the % of peak column divides by")


def _pairs_table(pairs: list[dict[str, Any]]) -> object:
    rows = [[p.get("teacher", DASH), p.get("student", DASH),
             "x".join(str(v) for v in p["input_size"]) if isinstance(p.get("input_size"), list) else DASH,
             p.get("runner", DASH), fmt(p.get("batch"), 0), fmt(p.get("teacher_p50_ms"), 1),
             fmt(p.get("student_p50_ms"), 1), fmt(p.get("speedup"), 2, suffix="x"),
             fmt(p.get("teacher_gflops"), 1), fmt(p.get("student_gflops"), 1)] for p in pairs]
    headers = ["teacher", "student", "input", "runner", "batch", "teacher p50 ms", "student p50 ms", "speedup",
               "teacher GFLOPs", "student GFLOPs"]
    return table(headers, [*rows, PAPER_PAIR], align="llllrrrrrr",
                 caption="Teacher vs student at the same input; the last row is the paper's claim")


def _triton_parts(triton: dict[str, Any], where: Path) -> list[object]:
    load = [[fmt(r.get("concurrency"), 0), fmt(r.get("requests"), 0), fmt(r.get("failures"), 0),
             fmt(r.get("p50_ms"), 2), fmt(r.get("p90_ms"), 2), fmt(r.get("p99_ms"), 2),
             fmt(r.get("throughput_ips"), 1), fmt(r.get("mean_server_batch"), 2)]
            for r in objects(triton, "load", where=where)]
    trip = [[r.get("runner", DASH), fmt(r.get("batch"), 0), fmt(r.get("p50_ms"), 2), fmt(r.get("p90_ms"), 2),
             fmt(r.get("p99_ms"), 2), fmt(r.get("throughput_ips"), 1)]
            for r in objects(triton, "round_trip", where=where)]
    parts: list[object] = [tag("h3", f"Triton: {triton.get('model', DASH)}")]
    parts.append(table(["concurrency", "requests", "failures", "p50 ms", "p90 ms", "p99 ms", "img/s",
                        "server batch"], load, align="rrrrrrrr", caption="Closed-loop load per concurrency level"))
    if trip:
        parts.append(table(["runner", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s"], trip, align="lrrrrr",
                           caption="gRPC round trip against the same graph in-process"))
    return parts


def _plot_parts(run: RunFiles, plots: dict[str, Any]) -> list[object]:
    parts: list[object] = []
    folder = run.layout.bench_dir.resolve()
    for name, rel in plots.items():
        path = (folder / str(rel)).resolve()
        # only pictures inside the bench folder: the JSON must not pull arbitrary files into the page
        png = run.png(path) if path.is_relative_to(folder) else None
        if png is None:
            parts.append(note(f"bench plot {name!s}: {BENCH}/{rel!s} missing or not a PNG"))
        else:
            parts.append(figure(png, caption=f"{name}: {BENCH}/{rel}"))
    return parts


def _triton_doc(run: RunFiles, bench: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """The load test from latency.json, or from the separate triton.json an older bench wrote."""
    where = run.layout.bench_latency
    triton = mapping(bench, "triton", where=where)
    if not triton and run.exists(run.layout.bench_triton_legacy):
        where = run.layout.bench_triton_legacy
        triton = mapping(run.json(where) or {}, "triton", where=where)
    return triton, where


def latency_section(*, run: RunFiles) -> Section:
    where = run.layout.bench_latency
    bench = run.json(where)
    if bench is None:
        return section("latency", "Latency and throughput", [missing(run.layout.shown(where), "bench")])
    settings = mapping(bench, "settings", where=where)
    parts: list[object] = [note("settings: " + (", ".join(f"{k} {v}" for k, v in settings.items()) or DASH)),
                           _latency_table(objects(bench, "rows", where=where))]
    peaks = mapping(bench, "peaks", where=where)
    if peaks:
        parts.append(_peaks_table(peaks))
    parts += _profile_parts(mapping(bench, "profiles", where=where))
    pairs = objects(bench, "pairs", where=where)
    parts += [tag("h3", "Teacher vs student"), _pairs_table(pairs)]
    if not pairs:
        parts.append(note("this bench timed no teacher/student pair; only the paper's claim is shown"))
    parts += [note(f"skipped {s.get('model', DASH)} / {s.get('runner', DASH)}: {s.get('reason', DASH)}")
              for s in objects(bench, "skipped", where=where)]
    triton, triton_where = _triton_doc(run, bench)
    parts += _triton_parts(triton, triton_where) if triton else [
        note("no Triton load test in this bench (run `sskd-deploy bench --triton HOST:PORT`)")]
    plots = mapping(bench, "plots", where=where)
    if plots:
        parts += [tag("h3", "Plots"), *_plot_parts(run, plots)]
    return section("latency", "Latency and throughput", parts)
