"""Closed-loop load: ``concurrency`` clients each send the next request as soon as the last returns.

Per level: every request's latency (p50/p90/p99), completed requests per second, and failures
(with the first few error messages). When the runner can report server-side statistics (Triton),
the counters' change over the level gives the mean batch the server actually executed, which is
what dynamic batching is for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from sskd_deploy.bench.latency import percentiles


STAGES = ("queue", "compute_input", "compute_infer", "compute_output")


def _server_counts(runner: Any) -> dict[str, int] | None:
    """Triton's cumulative counters: inferences, executions, successful requests and ns per stage."""
    stats = getattr(runner, "statistics", None)
    if stats is None:
        return None
    data = stats()
    inference = data.get("inference_stats", {})
    counts = {"inferences": int(data.get("inference_count", 0)), "executions": int(data.get("execution_count", 0)),
              "success": int(inference.get("success", {}).get("count", 0))}
    counts.update({stage: int(inference.get(stage, {}).get("ns", 0)) for stage in STAGES})
    return counts


def load_level(runner: Any, images: np.ndarray, *, concurrency: int, duration_s: float,
               warmup_s: float = 1.0) -> dict[str, Any]:
    """Run ``concurrency`` closed-loop clients for ``warmup_s`` (discarded) then ``duration_s``."""
    if concurrency < 1 or duration_s <= 0:
        raise ValueError(f"concurrency must be >= 1 and duration > 0, got {concurrency}, {duration_s}")
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    failures: list[list[str]] = [[] for _ in range(concurrency)]
    phase = {"measure": False, "stop": False}
    barrier = threading.Barrier(concurrency + 1)

    def client(i: int) -> None:
        barrier.wait()
        while not phase["stop"]:
            measuring = phase["measure"]
            start = time.perf_counter()
            try:
                runner.run(images)
                ok, error = True, ""
            except Exception as err:  # noqa: BLE001 - every failed request is counted, whatever its kind
                ok, error = False, f"{type(err).__name__}: {err}"
            elapsed = (time.perf_counter() - start) * 1000.0
            if measuring and phase["measure"]:
                (latencies[i].append(elapsed) if ok else failures[i].append(error))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    time.sleep(warmup_s)
    before = _server_counts(runner)
    phase["measure"] = True
    start = time.perf_counter()
    time.sleep(duration_s)
    phase["measure"] = False
    elapsed = time.perf_counter() - start
    phase["stop"] = True
    for thread in threads:
        thread.join()
    after = _server_counts(runner)

    samples = [x for per in latencies for x in per]
    errors = [x for per in failures for x in per]
    batch = int(images.shape[0])
    row: dict[str, Any] = {"concurrency": concurrency, "batch": batch, "duration_s": round(elapsed, 3),
                           "requests": len(samples) + len(errors), "failures": len(errors),
                           "errors": sorted(set(errors))[:5]}
    if samples:
        stats = percentiles(samples, batch)
        stats["throughput_ips"] = batch * len(samples) / elapsed  # completed images per second of wall time
        stats["throughput_rps"] = len(samples) / elapsed
        row.update(stats)
    if before is not None and after is not None:
        delta = {k: after[k] - before[k] for k in after}
        row["server_inferences"], row["server_executions"] = delta["inferences"], delta["executions"]
        row["mean_server_batch"] = delta["inferences"] / delta["executions"] if delta["executions"] else None
        if delta["success"]:  # mean ms per request spent in each server stage (the rest is transport + client)
            row["server_ms"] = {stage: delta[stage] / delta["success"] / 1e6 for stage in STAGES}
    return row


def load_test(runner: Any, images: np.ndarray, levels: list[int], *, duration_s: float, warmup_s: float = 1.0,
              log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    rows = []
    for level in levels:
        row = load_level(runner, images, concurrency=level, duration_s=duration_s, warmup_s=warmup_s)
        rows.append(row)
        if log is not None:
            if "p50_ms" in row:
                log(f"concurrency {level}: {row['requests']} requests, {row['failures']} failed, p50 "
                    f"{row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, {row['throughput_ips']:.1f} img/s"
                    + (f", mean server batch {row['mean_server_batch']:.2f}" if row.get("mean_server_batch") else "")
                    + ("; server ms/request " + ", ".join(f"{k} {v:.2f}" for k, v in row["server_ms"].items())
                       if row.get("server_ms") else ""))
            else:
                log(f"concurrency {level}: all {row['requests']} requests failed: {row['errors'][:1]}")
    return rows


def parse_levels(text: str) -> list[int]:
    """``"1,4,8"`` -> ``[1, 4, 8]``; a ValueError names the bad item."""
    levels = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise ValueError(f"--concurrency: {item!r} is not a positive integer (expected e.g. 1,4,8)")
        levels.append(int(item))
    return levels
