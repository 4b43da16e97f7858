"""The rich console tables more than one command prints.

``print_check_report`` (``data check`` and the main job's check step), ``print_parity`` (``export``,
``verify`` and the main job's served-model check) and ``print_bench`` with its Triton load table
``print_load`` (``bench`` and the main job's bench step). Printing only: nothing here computes,
reads or writes a file, and no command module imports another one just to print.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from sskd_deploy.data.check import CheckReport


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


def print_bench(result: dict, console: Console) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    def f(value, digits=1, scale=1.0, suffix=""):
        return "n/a" if value is None else f"{value * scale:.{digits}f}{suffix}"

    for model in dict.fromkeys(r["model"] for r in result["rows"]):
        table = Table(title=f"{model}: ms per call", box=box.SIMPLE, pad_edge=False, collapse_padding=True)
        for column in ("runner", "batch", "pre", "infer", "p99", "post", "e2e", "img/s", "%peak", "speed-up",
                       "compile s", "AP drop"):
            table.add_column(column, justify="left" if column == "runner" else "right", no_wrap=True)
        for r in (r for r in result["rows"] if r["model"] == model):
            speedup = r.get("speedup_vs_torch-fp32")
            speedup = r.get("speedup_vs_torch-cuda-fp32") if speedup is None else speedup
            table.add_row(r["runner"], str(r["batch"]), f(r["pre_ms"]["p50"]), f(r["p50_ms"]), f(r["p99_ms"]),
                          f(r["post_ms"]["p50"]), f(r["e2e_ms"]["p50"]), f(r["throughput_ips"]),
                          f(r.get("peak_fraction"), 2, 100.0), f(speedup, 2, suffix="x"),
                          f(r.get("compile_s")), f(r.get("ap_drop"), 2))
        console.print(table)
    if result["rows"]:
        console.print("p50 unless named; infer = runner.run, e2e = pre + infer + post; img/s from the mean infer "
                      "time; %peak = achieved GFLOP/s over the measured peak; speed-up = torch-fp32 (else torch-cuda-fp32) "
                      "infer p50 / infer p50; compile s = the compiling first call, not in the latency; AP drop = "
                      "FP32 AP - quantised AP on the val split, points.", soft_wrap=True)
    for p in result["pairs"]:
        (sh, sw), (th, tw) = p["input_size"], p.get("teacher_input_size", p["input_size"])
        at = f"at {sh}x{sw}" if (sh, sw) == (th, tw) else f"at {th}x{tw} -> {sh}x{sw}"
        stages = p.get("teacher_stages_ms")
        if stages:
            console.print("teacher split: " + ", ".join(f"{k} {v:.1f} ms" for k, v in stages.items()), soft_wrap=True)
        console.print(f"pair {p['teacher']} -> {p['student']} {at}, "
                      f"{p['runner']}: {p['teacher_p50_ms']:.1f} -> {p['student_p50_ms']:.1f} ms, "
                      f"[bold]{p['speedup']:.2f}x[/bold] faster ({p['teacher_gflops']:.1f} -> "
                      f"{p['student_gflops']:.1f} GFLOPs; paper: 350.9 -> 76.9 ms, 4.56x)", soft_wrap=True)
    for s in result["skipped"]:  # reasons quote pip extras like '.[tensorrt]': not rich markup
        console.print(escape(f"skipped {s['model']} / {s['runner']}: {s['reason']}"), soft_wrap=True)
    if "triton" in result:
        print_load(result["triton"]["load"], console)


def print_load(rows: list[dict], console: Console) -> None:
    from rich.table import Table

    from rich import box

    table = Table(title="Triton load (ms per request)", box=box.SIMPLE, pad_edge=False)
    for column in ("conc.", "requests", "failed", "p50", "p90", "p99", "img/s", "server batch"):
        table.add_column(column, justify="right", no_wrap=True)
    for r in rows:
        def f(key, digits=1):
            return "n/a" if r.get(key) is None else f"{r[key]:.{digits}f}"

        table.add_row(str(r["concurrency"]), str(r["requests"]), str(r["failures"]), f("p50_ms"), f("p90_ms"),
                      f("p99_ms"), f("throughput_ips"), f("mean_server_batch", 2))
    console.print(table)
