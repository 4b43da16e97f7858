"""``sskd-deploy bench``: every runner at every batch size, the machine's peaks, pairs, plots.

One run measures the attainable peaks first, then times each model group (the run's trained
artifact, any preset named in ``bench.models``, each teacher/student pair) one group at a time so
only one set of weights is in memory, and writes ``latency.json``, ``latency.csv``,
``latency.png`` and ``roofline.png`` side by side.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sskd_deploy.commands.tables import print_bench
from sskd_deploy.config.layout import RunLayout, partial_rows
from sskd_deploy.errors import SSKDError
from sskd_deploy.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from rich.console import Console

    from sskd_deploy.bench.models import ModelGroup
    from sskd_deploy.config import Config
    from sskd_deploy.config.bench import BenchConfig

CSV_FIELDS = ["model", "runner", "precision", "device", "provider", "batch", "threads", "timer", "p50_ms", "p90_ms",
              "p99_ms", "mean_ms", "throughput_ips", "pre_p50_ms", "post_p50_ms", "e2e_p50_ms", "e2e_throughput_ips",
              "first_call_ms", "compile_s", "ap_drop", "gflops_per_image", "achieved_gflops", "peak_name", "peak_fraction",
              "speedup_vs_torch-fp32", "speedup_vs_torch-cuda-fp32"]


def time_group(group: ModelGroup, images: list, settings: BenchConfig, *, batches, log,
               on_row: Callable[[dict], None] | None = None) -> tuple[list, list]:
    """Rows for every runner of ``group`` at every batch size, and what was skipped (with why);
    ``on_row`` sees each row as soon as it is measured."""
    from sskd_deploy.bench.latency import stage_row, time_stages

    rows, skipped = [], [{"model": group.label, **s} for s in group.skipped]
    for name, runner in group.runners.items():
        for batch in batches:
            if batch > runner.max_batch:
                skipped.append({"model": group.label, "runner": name,
                                "reason": f"batch {batch} exceeds the runner's maximum {runner.max_batch}"})
                continue
            calls = len(getattr(runner, "stage_times", []))
            try:
                samples = time_stages(runner, images[:batch], iters=settings.iters, warmup=settings.warmup,
                                      score_threshold=settings.score_threshold)
            except Exception as err:  # noqa: BLE001 - recorded with its type and message, never silent
                if not settings.keep_going:
                    raise
                reason = f"failed at batch {batch}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                skipped.append({"model": group.label, "runner": name, "reason": reason})
                log(f"  [red]{name} batch {batch} failed[/red] (bench.keep_going): {type(err).__name__}")
                continue
            info = runner.info.to_dict()
            row = {"model": group.label, **info, "path": group.recorded_path(info["path"]), "runner": name,
                   "batch": batch, "threads": settings.threads, "gflops_per_image": group.gflops_per_image,
                   "parameters": group.parameters, "io_bytes_per_image": group.io_bytes_per_image,
                   **stage_row(samples, batch), **_extras(runner, group, batch, calls, settings.iters)}
            rows.append(row)
            if on_row is not None:
                on_row(row)
            compiled = f", compiled in {row['compile_s']:.1f} s" if row.get("compile_s") is not None else ""
            log(f"  {name} batch {batch}: infer p50 {row['p50_ms']:.1f} ms (pre {row['pre_ms']['p50']:.1f}, "
                f"post {row['post_ms']['p50']:.1f}), {row['throughput_ips']:.1f} img/s{compiled}")
            if "stages_ms" in row:
                log("    " + ", ".join(f"{k} {v['p50']:.1f} ms" for k, v in row["stages_ms"].items()))
    return rows, skipped


def _extras(runner, group: ModelGroup, batch: int, calls_before: int, iters: int) -> dict[str, Any]:
    """Compile time (compiled runners) and the per-stage split of the timed calls (staged runners)."""
    extras: dict[str, Any] = {}
    compile_s = getattr(runner, "compile_seconds", {}).get(batch)
    if compile_s is not None:
        extras["compile_s"] = compile_s
    stage_times = getattr(runner, "stage_times", None)
    if stage_times is not None:
        from sskd_deploy.bench.grounded import stage_summary

        extras["stages_ms"] = stage_summary(stage_times[calls_before:][-iters:])  # the timed calls only
        extras["stage_gflops"] = dict(group.stage_gflops)
    return extras


def time_pairs(settings: BenchConfig, images: list, *, class_names: list[str], log,
               on_row: Callable[[dict], None] | None = None) -> tuple[list, list]:
    """Each (teacher, student), batch 1, through the PyTorch runners both have.

    A MaskFormer teacher runs at the student's input size; Grounded-SAM2 at the paper's operating
    point (``bench.grounded_input_size`` for Grounding DINO, SAM2 at its own image size)."""
    from sskd_deploy.bench.grounded import grounded_group, is_grounded
    from sskd_deploy.bench.models import RowOptions, torch_group

    options = RowOptions.from_settings(settings)
    rows, pairs = [], []
    for teacher, student in settings.pairs:
        timed, sizes = {}, {}
        size = settings.input_size
        for role, name in (("student", student), ("teacher", teacher)):
            if role == "teacher" and is_grounded(name):
                group = grounded_group(name, class_names=class_names, input_size=settings.grounded_input_size,
                                       options=options)
            else:
                group = torch_group(name, num_classes=len(class_names), input_size=size, options=options)
            size = sizes[role] = group.spec.input_size
            log(f"[bold]{group.label}[/bold] ({role}) at {size[0]}x{size[1]}, {group.gflops_per_image:.1f} GFLOPs")
            group_rows, _ = time_group(group, images, settings, batches=[1], log=log, on_row=on_row)
            group.close()
            for row in group_rows:  # a pair member may also be timed on its own (--model): keep the rows apart
                row["pair_role"], row["model"] = role, f"{group.label}, pair {role}"
            rows += group_rows
            timed[role] = {r["runner"]: r for r in group_rows}
        for runner in sorted(timed["student"].keys() & timed["teacher"].keys()):
            t, s = timed["teacher"][runner], timed["student"][runner]
            pair = {"teacher": teacher, "student": student, "input_size": list(sizes["student"]),
                    "teacher_input_size": list(sizes["teacher"]), "runner": runner,
                    "batch": 1, "teacher_p50_ms": t["p50_ms"], "student_p50_ms": s["p50_ms"],
                    "speedup": t["p50_ms"] / s["p50_ms"], "teacher_gflops": t["gflops_per_image"],
                    "student_gflops": s["gflops_per_image"], "teacher_parameters": t["parameters"],
                    "student_parameters": s["parameters"]}
            if "stages_ms" in t:
                pair["teacher_stages_ms"] = {k: v["p50"] for k, v in t["stages_ms"].items()}
            pairs.append(pair)
    return rows, pairs


def measure_peaks(settings: BenchConfig, log) -> dict[str, dict[str, Any]]:
    from sskd_deploy.bench.models import cuda_available
    from sskd_deploy.bench.roofline import measure_cpu_peaks, measure_cuda_peaks

    peaks = {"cpu": measure_cpu_peaks(settings.threads)}
    if cuda_available():
        peaks["cuda"] = measure_cuda_peaks()
    for device, table in peaks.items():
        log(f"{device} peaks: " + ", ".join(f"{k} {v:,.0f}" for k, v in table.items()
                                            if k.endswith(("gflops", "gops", "gbps"))))
    return peaks


def _groups(config: Config, artifact_dir: Path | None, sources: list[Path], num_classes: int, console):
    """Model groups, built lazily one at a time: the artifact's, then each preset of ``bench.models``."""
    from sskd_deploy.bench.models import RowOptions, artifact_group, preset_group

    settings = config.bench
    options = RowOptions.from_settings(settings)
    if artifact_dir is not None:
        yield lambda: artifact_group(artifact_dir, options)
    for preset in settings.models:
        yield lambda p=preset: preset_group(p, RunLayout.of(config).bench_graphs, num_classes=num_classes,
                                            options=options, calibration_images=sources,
                                            input_size=settings.input_size, onnx=settings.onnx, log=console.print)


def bench_command(config: Config, artifact_dir: Path | None, *, console: Console, out: Path | None = None,
                  triton: str | None = None, triton_model: str | None = None, concurrency: list[int] | None = None,
                  duration_s: float = 10.0) -> dict:
    """``bench``: see the module docstring. ``config.bench`` holds every setting; returns the result."""
    if artifact_dir is not None:
        from sskd_deploy.export.artifact import read_manifest

        read_manifest(Path(artifact_dir))  # a wrong directory is named before any data is read or model built
    import torch

    from sskd_deploy.bench.environment import bench_environment
    from sskd_deploy.bench.latency import add_speedups
    from sskd_deploy.bench.roofline import attach_roofline
    from sskd_deploy.data.image_io import read_image
    from sskd_deploy.data.sources import resolve_data
    from sskd_deploy.provenance import library_versions

    settings = config.bench
    torch.set_num_threads(settings.threads)
    data = resolve_data(config.data, console=console)
    layout = RunLayout.of(config)
    sources = [r.path for r in (data.unlabeled.records or data.val.records)]
    if artifact_dir is None and layout.export_manifest.is_file():  # export.out_dir, or <run>/export
        artifact_dir = layout.export_dir
    if artifact_dir is None and not settings.models and not settings.pairs and triton is None:
        raise SSKDError("nothing to time: no artifact directory (run `sskd-deploy export` first), no bench.models / "
                        "--model, no bench.pairs / --pair and no --triton")
    images = [read_image(p) for p in (sources * max(settings.batches))[:max(settings.batches)]]
    num_classes = len(data.labeled.categories)
    peaks = measure_peaks(settings, console.print) if settings.roofline else {}
    out = out or layout.bench_latency
    # each row as it is measured, so a run stopped by a time limit keeps what it measured; removed
    # once the full result is written
    partial = partial_rows(out)
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text("")

    def keep(row: dict) -> None:
        with partial.open("a") as handle:
            handle.write(json.dumps(row, default=str) + "\n")

    rows, skipped, parity, profiles = [], [], {}, {}
    for build in _groups(config, artifact_dir, sources, num_classes, console):
        group = build()
        h, w = group.spec.input_size
        console.print(f"[bold]{group.label}[/bold] at {h}x{w}, {group.gflops_per_image:.2f} GFLOPs/image, "
                      f"batches {list(settings.batches)}, {settings.threads} threads", soft_wrap=True)
        group_rows, group_skipped = time_group(group, images, settings, batches=settings.batches, log=console.print,
                                               on_row=keep)
        profiles.update(profile_group(group, images, settings, out, done=profiles, log=console.print))
        report = quantized_parity(group, data.val, config, group_rows, log=console.print)
        if report is not None:
            parity[group.label] = report
        group.close()
        rows += group_rows
        skipped += group_skipped
    pair_rows, pairs = time_pairs(settings, images, class_names=list(data.labeled.categories.names), log=console.print,
                                  on_row=keep)
    rows += pair_rows
    add_speedups(rows, "torch-fp32")
    if any(r["runner"] == "torch-cuda-fp32" for r in rows):
        add_speedups(rows, "torch-cuda-fp32")
    attach_roofline(rows, peaks)
    over = [f"{r['runner']} batch {r['batch']}" for r in rows if (r.get("peak_fraction") or 0) > 1]
    if over:  # a peak measured while something else loaded the machine: fractions are not trustworthy
        console.print(f"[yellow]warning[/yellow]: {', '.join(over)} ran faster than the measured peak; the peaks "
                      "were measured under load. Re-run bench on an idle machine.", soft_wrap=True)
    # rows of the artifact's runners name their files relative to it
    result = {"format": "sskd-deploy/bench", "version": 2, "settings": settings.model_dump(mode="json"),
              "artifact": None if artifact_dir is None else str(Path(artifact_dir).absolute()),
              "environment": bench_environment(), "versions": library_versions(), "peaks": peaks, "rows": rows,
              "pairs": pairs, "skipped": skipped, "parity": parity, "profiles": profiles,
              "plots": write_plots(rows, pairs, peaks, out)}
    missing = sorted(set(settings.profile) - {key.rsplit(" / ", 1)[1] for key in profiles})
    if missing:
        console.print(f"[yellow]warning[/yellow]: --profile {', '.join(missing)}: no such runner was timed "
                      f"(runners: {', '.join(sorted({r['runner'] for r in rows}))})", soft_wrap=True)
    if triton is not None:
        result["triton"] = _triton_section(triton, triton_model, artifact_dir, sources, settings, concurrency,
                                           duration_s, console)
        result["settings"].update(concurrency=concurrency or [1], duration_s=duration_s)
    write_outputs(result, out)
    partial.unlink(missing_ok=True)
    print_bench(result, console)
    console.print(f"wrote {out}, {out.with_suffix('.csv')} and the plots {', '.join(result['plots'].values())}")
    broken = [f"{label}: {r['runner']}" for label, report in parity.items() for r in report["rows"]
              if not r.get("ok", True)]
    if broken and settings.torchao == "on":  # asked for: the gate holds, as export's does
        raise SSKDError(f"quantised rows over the AP-drop budget ({', '.join(broken)}): see 'parity' in {out}")
    if broken:  # rows added because torchao happened to be installed: reported, not fatal
        console.print(f"[yellow]warning[/yellow]: over the AP-drop budget: {', '.join(broken)} (bench.torchao: on "
                      "makes this an error)", soft_wrap=True)
    return result


def profile_group(group: ModelGroup, images: list, settings: BenchConfig, out: Path, *, done: dict,
                  log) -> dict[str, dict[str, Any]]:
    """Profile the runners of ``group`` named in ``bench.profile`` (batch 1, in every group that has them);
    writes ``profile_<model>_<runner>.json`` beside ``out`` and returns the summaries by ``"<model> / <runner>"``."""
    import re

    from sskd_deploy.bench.op_profile import profile_runner
    from sskd_deploy.preprocess import preprocess_batch

    found: dict[str, dict[str, Any]] = {}
    if not any(name in group.runners for name in settings.profile):
        return found
    batch, _ = preprocess_batch(images[:1], group.spec.input_size)
    for name in settings.profile:
        runner = group.runners.get(name)
        key = f"{group.label} / {name}"
        if runner is None or key in done:
            continue
        profile = profile_runner(runner, batch, threads=settings.threads)
        profile["model"], profile["path"] = group.label, group.recorded_path(profile["path"])
        slug = re.sub(r"[^A-Za-z0-9]+", "-", group.label).strip("-")
        path = out.with_name(f"profile_{slug}_{name}.json")
        atomic_write_json(path, profile, indent=2)
        found[key] = {**profile, "file": path.name}
        top = ", ".join(f"{r['op_type']} {r['ms']:.1f} ms ({r['percent']:.0f}%)" for r in profile["by_op_type"][:5])
        log(f"  profile {name}: {profile['total_ms']:.1f} ms of kernels per call; top: {top} -> {path.name}")
    return found


def quantized_parity(group: ModelGroup, val, config: Config, rows: list[dict], *, log) -> dict | None:
    """The parity gate for the torchao rows: AP on (the first ``bench.parity_images`` of) the val split
    against FP32 on the same device, with the export budgets; each row gets its ``ap_drop``."""
    from dataclasses import replace

    from sskd_deploy.export.parity import compare_runners

    quantized = {n: r for n, r in group.runners.items() if r.info.backend == "torchao"}
    count = config.bench.parity_images
    if not quantized or not count or not val.records:
        return None
    reports = {}
    for device in dict.fromkeys(r.info.device for r in quantized.values()):
        reference = group.runners.get("torch-cuda-fp32" if device.startswith("cuda") else "torch-fp32")
        if reference is None:
            log(f"  no FP32 row on {device} to hold the torchao rows against: no AP drop")
            continue
        others = {n: r for n, r in quantized.items() if r.info.device == device}
        subset = replace(val, records=val.records[:count])
        reports[device] = compare_runners(reference, others, subset, budgets=config.export.budgets, batch_size=1)
    if not reports:
        return None
    report = {"rows": [r for rep in reports.values() for r in rep["rows"] if r["runner"] in quantized],
              "reference": {d: rep["reference"] for d, rep in reports.items()},
              "images": min(count, len(val.records)), "split": val.name, "budgets": config.export.budgets.model_dump()}
    drops = {r["runner"]: r.get("ap_drop") for r in report["rows"]}
    for row in rows:
        if row["runner"] in drops:
            row["ap_drop"] = drops[row["runner"]]
    for r in report["rows"]:
        drop = "n/a" if r.get("ap_drop") is None else f"{r['ap_drop']:.2f}"
        log(f"  {r['runner']}: AP {r['ap'] if r['ap'] is None else round(r['ap'], 2)}, AP drop vs FP32 {drop} "
            f"points on {report['images']} val images ({'ok' if r.get('ok', True) else 'OVER BUDGET'})")
    return report


def write_plots(rows: list[dict], pairs: list[dict], peaks: dict, out: Path) -> dict[str, str]:
    from sskd_deploy.bench.plots import plot_latency, plot_roofline

    if not rows:
        return {}
    plots = {"latency": plot_latency(rows, pairs, out.with_name(out.stem + ".png")).name}
    if peaks:
        plots["roofline"] = plot_roofline(rows, peaks, out.with_name("roofline.png")).name
    return plots


def _triton_section(url, model, artifact_dir, sources, settings, concurrency, duration_s, console) -> dict:
    from sskd_deploy.data.image_io import read_image
    from sskd_deploy.commands.serve import bench_triton
    from sskd_deploy.preprocess import preprocess_batch

    def images_for(spec, n):
        return preprocess_batch([read_image(p) for p in (sources * n)[:n]], spec.input_size)[0]

    section = bench_triton(url, model, artifact_dir, images_for, levels=concurrency or [1], duration_s=duration_s,
                           threads=settings.threads, iters=settings.iters, warmup=settings.warmup, console=console)
    return section


def _csv(rows: list[dict], fields: list[str]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def write_outputs(result: dict, out: Path) -> None:
    flat = [{**r, "pre_p50_ms": r.get("pre_ms", {}).get("p50"), "post_p50_ms": r.get("post_ms", {}).get("p50"),
             "e2e_p50_ms": r.get("e2e_ms", {}).get("p50")} for r in result["rows"]]
    atomic_write_text(out.with_suffix(".csv"), _csv(flat, CSV_FIELDS))
    if "triton" in result:
        load_fields = ["concurrency", "batch", "requests", "failures", "duration_s", "p50_ms", "p90_ms", "p99_ms",
                       "mean_ms", "throughput_ips", "throughput_rps", "mean_server_batch"]
        atomic_write_text(out.with_name(out.stem + "_triton_load.csv"), _csv(result["triton"]["load"], load_fields))
    atomic_write_json(out, result, indent=2)

