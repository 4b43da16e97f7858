"""Latency of every runner on the same input: warm-up, fixed iterations, percentiles, throughput.

A benchmark call is split in the three parts a deployment pays for, each timed on its own:

- ``pre``: decoded RGB images -> the uint8 input batch (:func:`sskd_deploy.preprocess.preprocess_batch`),
- ``infer``: ``runner.run`` (the graph, its selection tail and the host<->device copies),
- ``post``: outputs -> :class:`Instances` at the original size (:func:`sskd_deploy.evaluation.postprocess.postprocess_batch`).

The row's headline percentiles are those of ``infer`` (what differs between runners); ``e2e`` is
the sum per iteration. On CUDA the ``infer`` time comes from CUDA events recorded around the
call. Thread counts are set explicitly and recorded: a CPU latency without its thread count is
not a figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from sskd_deploy.evaluation.postprocess import postprocess_batch
from sskd_deploy.preprocess import preprocess_batch
from sskd_deploy.runtime.base import Runner

Timer = Callable[[Callable[[], Any]], tuple[Any, float]]  # fn -> (its result, milliseconds)
MAX_EXTRA_WARMUP = 10
STEADY_WINDOW, STEADY_SPREAD = 3, 1.3  # warm-up ends when the last 3 calls are within 1.3x of each other


def steady(window: Sequence[float]) -> bool:
    return len(window) >= STEADY_WINDOW and max(window) <= STEADY_SPREAD * min(window)


def percentiles(samples_ms: Sequence[float], batch: int) -> dict[str, float]:
    """p50/p90/p99/mean/min in ms and throughput in images/s from per-call wall times."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(arr.mean()),
            "min_ms": float(arr.min()), "throughput_ips": float(batch * 1000.0 / arr.mean()), "iters": len(arr)}


def wall_timer(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - start) * 1000.0


def cuda_event_timer(fn: Callable[[], Any]) -> tuple[Any, float]:
    """GPU time between two events recorded on the current stream around ``fn``; waits for the second."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    result = fn()
    end.record()
    end.synchronize()
    return result, float(start.elapsed_time(end))


def timer_for(runner: Runner) -> tuple[str, Timer]:
    """CUDA events for a PyTorch runner on a GPU, wall clock for everything else."""
    if runner.info.backend in ("torch", "torchao") and runner.info.device.startswith("cuda"):
        return "cuda_event", cuda_event_timer
    return "perf_counter", wall_timer


def time_call(fn: Callable[[], Any], *, iters: int, warmup: int) -> list[float]:
    """Wall time of ``fn()`` in ms, ``iters`` times after ``warmup`` untimed calls."""
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters must be >= 1 and warmup >= 0, got {iters}, {warmup}")
    for _ in range(warmup):
        fn()
    return [wall_timer(fn)[1] for _ in range(iters)]


def time_stages(runner: Runner, images: Sequence[np.ndarray], *, iters: int, warmup: int,
                score_threshold: float = 0.5) -> dict[str, Any]:
    """Per-iteration ms of pre, infer, post and their sum for one batch of decoded RGB ``images``.

    Also returns ``first_call_ms`` (compilation, lazy initialisation) and ``kept`` (instances per
    image after post-processing, which is what post-processing time scales with).
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters must be >= 1 and warmup >= 0, got {iters}, {warmup}")
    name, timer = timer_for(runner)
    size = runner.spec.input_size

    def once() -> tuple[float, float, float, int]:
        (batch, infos), pre = wall_timer(lambda: preprocess_batch(images, size))
        outputs, infer = timer(lambda: runner.run(batch))
        instances, post = wall_timer(lambda: postprocess_batch(*outputs, infos, score_threshold=score_threshold))
        return pre, infer, post, sum(len(inst) for inst in instances)

    warm = [once()[1] for _ in range(warmup)]
    # Compiled code keeps settling for several calls after it is built (loading kernels, allocator and
    # primitive caches): past the fixed count, warm up until the last calls agree with each other.
    while warm and len(warm) < warmup + MAX_EXTRA_WARMUP and not steady(warm[-STEADY_WINDOW:]):
        warm.append(once()[1])
    samples: dict[str, list[float]] = {"pre": [], "infer": [], "post": [], "e2e": []}
    kept = 0
    for _ in range(iters):
        pre, infer, post, count = once()
        for key, value in zip(samples, (pre, infer, post, pre + infer + post)):
            samples[key].append(value)
        kept += count
    return {**samples, "timer": name, "first_call_ms": warm[0] if warm else None, "warmup_calls": len(warm),
            "kept": kept / (iters * len(images))}


def stage_row(samples: Mapping[str, Any], batch: int) -> dict[str, Any]:
    """A bench row from :func:`time_stages` output: infer percentiles at the top, the stages beside."""
    row = dict(percentiles(samples["infer"], batch))
    for stage in ("pre", "post"):
        arr = np.asarray(samples[stage])
        row[f"{stage}_ms"] = {"p50": float(np.median(arr)), "mean": float(arr.mean())}
    e2e = percentiles(samples["e2e"], batch)
    row["e2e_ms"] = {"p50": e2e["p50_ms"], "p90": e2e["p90_ms"], "p99": e2e["p99_ms"], "mean": e2e["mean_ms"]}
    row["e2e_throughput_ips"] = e2e["throughput_ips"]
    row.update(timer=samples["timer"], first_call_ms=samples["first_call_ms"], warmup_calls=samples["warmup_calls"],
               kept_per_image=samples["kept"])
    return row


def bench_runners(runners: Mapping[str, Runner], images: np.ndarray, *, iters: int, warmup: int,
                  log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One inference-only row per runner, all fed the preprocessed uint8 ``images`` ``(B, 3, H, W)``."""
    rows = []
    for name, runner in runners.items():
        samples = time_call(lambda r=runner: r.run(images), iters=iters, warmup=warmup)
        row = {**runner.info.to_dict(), "runner": name, "batch": int(images.shape[0]),
               **percentiles(samples, images.shape[0])}
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
