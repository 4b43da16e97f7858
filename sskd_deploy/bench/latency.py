"""Latency of every runner on the same input: warm-up, fixed iterations, percentiles, throughput.

Each row times ``runner.run`` on one preprocessed uint8 batch (the network and the graph's
selection tail; host pre/post-processing are the same numpy code for every runner and are left
out so rows compare the compiled forms). Thread counts are set explicitly and recorded: a CPU
latency without its thread count is not a figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from sskd_deploy.runtime.base import Runner


def percentiles(samples_ms: list[float], batch: int) -> dict[str, float]:
    """p50/p90/p99/mean/min in ms and throughput in images/s from per-call wall times."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(arr.mean()),
            "min_ms": float(arr.min()), "throughput_ips": float(batch * 1000.0 / arr.mean()), "iters": len(arr)}


def time_call(fn: Callable[[], Any], *, iters: int, warmup: int) -> list[float]:
    """Wall time of ``fn()`` in ms, ``iters`` times after ``warmup`` untimed calls."""
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters must be >= 1 and warmup >= 0, got {iters}, {warmup}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def bench_runners(runners: Mapping[str, Runner], images: np.ndarray, *, iters: int, warmup: int,
                  log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One row per runner, all fed ``images`` (uint8 ``(B, 3, H, W)``)."""
    rows = []
    for name, runner in runners.items():
        samples = time_call(lambda r=runner: r.run(images), iters=iters, warmup=warmup)
        row = {"runner": name, **runner.info.to_dict(), "batch": int(images.shape[0]),
               **percentiles(samples, images.shape[0])}
        row["runner"] = name
        rows.append(row)
        if log is not None:
            log(f"{name}: p50 {row['p50_ms']:.1f} ms, p90 {row['p90_ms']:.1f} ms, {row['throughput_ips']:.2f} img/s")
    return rows


def add_speedups(rows: list[dict[str, Any]], baseline: str) -> None:
    """``speedup_vs_<baseline>`` = baseline p50 / row p50, for rows of the same model and batch."""
    base = {(r.get("model"), r["batch"]): r["p50_ms"] for r in rows if r["runner"] == baseline}
    for row in rows:
        ref = base.get((row.get("model"), row["batch"]))
        row[f"speedup_vs_{baseline}"] = None if ref is None else ref / row["p50_ms"]
