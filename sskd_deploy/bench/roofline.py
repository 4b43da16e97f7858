"""The machine's attainable peaks, measured in the same run as the latencies, and each row's share.

Peaks are measured, not looked up: large square matrix products at the benchmark's thread
count, best of a few repeats, through every library a runner uses (PyTorch's BLAS / oneDNN and
ONNX Runtime's MLAS for FP32; ONNX Runtime ``MatMulInteger`` and PyTorch ``_int_mm`` for INT8),
and a large tensor copy for memory bandwidth. The attainable peak of a precision is the best of
its measurements. A row's achieved rate is ``FLOPs per image x batch / inference time``, where the
FLOP count is the network's (``torch.utils.flop_counter``, 2 per multiply-add); INT8 graphs are
held against the INT8 peak, everything else against the peak of the precision it computes in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sskd_deploy.bench.latency import Timer, cuda_event_timer, wall_timer

BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "mixed": 1}


def _best_rate(fn: Callable[[], Any], work: float, *, repeats: int, timer: Timer = wall_timer) -> float:
    """``work`` units per second of the fastest of ``repeats`` calls (one untimed call first), in G/s."""
    fn()
    best_ms = min(timer(fn)[1] for _ in range(repeats))
    return work / (best_ms / 1000.0) / 1e9


def _ort_session(kind: str, n: int, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "int8":
        weight = numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "B")
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        weight = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "peak", [helper.make_tensor_value_info("A", a_type, [n, n])],
                              [helper.make_tensor_value_info("Y", y_type, [n, n])], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def measure_cpu_peaks(threads: int, *, n: int = 1024, repeats: int = 5) -> dict[str, Any]:
    """FP32 GFLOP/s, INT8 GOP/s and copy bandwidth (GB/s) of this CPU at ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    work = 2.0 * n**3
    rng = np.random.default_rng(0)
    a32 = rng.standard_normal((n, n), dtype=np.float32)
    au8 = rng.integers(0, 256, (n, n), dtype=np.uint8)
    t32 = torch.from_numpy(a32)
    ti8 = torch.randint(-127, 128, (n, n), dtype=torch.int8)
    fp32_ort, int8_ort = _ort_session("fp32", n, threads), _ort_session("int8", n, threads)
    methods = {
        "fp32": {"torch.mm": _best_rate(lambda: t32 @ t32, work, repeats=repeats),
                 "onnxruntime.MatMul": _best_rate(lambda: fp32_ort.run(None, {"A": a32}), work, repeats=repeats)},
        "int8": {"onnxruntime.MatMulInteger": _best_rate(lambda: int8_ort.run(None, {"A": au8}), work,
                                                         repeats=repeats)},
    }
    try:
        methods["int8"]["torch._int_mm"] = _best_rate(lambda: torch._int_mm(ti8, ti8), work, repeats=repeats)
    except (RuntimeError, AttributeError, NotImplementedError):  # not built for this CPU / torch
        pass
    # BF16 matmul: OpenVINO's BF16 rows are held against it. Without native BF16 (no avx512_bf16/AMX)
    # torch emulates it, slower than FP32, which is then the honest peak for such rows too.
    tb16 = t32.to(torch.bfloat16)
    methods["bf16"] = {"torch.mm": _best_rate(lambda: tb16 @ tb16, work, repeats=repeats)}
    src = torch.empty(32 * 2**20, dtype=torch.float32).fill_(1.0)  # 128 MB: far beyond any cache
    dst = torch.empty_like(src)
    bandwidth = _best_rate(lambda: dst.copy_(src), 2.0 * src.numel() * 4, repeats=repeats)
    return {"fp32_gflops": max(methods["fp32"].values()), "int8_gops": max(methods["int8"].values()),
            "bf16_gflops": max(max(methods["bf16"].values()), max(methods["fp32"].values())),
            "memory_gbps": bandwidth, "threads": threads, "matrix": n, "methods": methods}


def measure_cuda_peaks(*, n: int = 8192, repeats: int = 10) -> dict[str, Any]:
    """FP32 (no TF32), TF32, FP16, BF16 and INT8 matmul rates and copy bandwidth of CUDA device 0."""
    import torch

    work, peaks = 2.0 * n**3, {}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, allow_tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                                        ("fp16", torch.float16, False), ("bf16", torch.bfloat16, False)):
            torch.backends.cuda.matmul.allow_tf32 = allow_tf32
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            peaks[f"{name}_gflops"] = _best_rate(lambda a=a: a @ a, work, repeats=repeats, timer=cuda_event_timer)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    i8 = torch.randint(-127, 128, (n, n), device="cuda", dtype=torch.int8)
    peaks["int8_gops"] = _best_rate(lambda: torch._int_mm(i8, i8), work, repeats=repeats, timer=cuda_event_timer)
    src = torch.ones(256 * 2**20, device="cuda")
    dst = torch.empty_like(src)
    peaks["memory_gbps"] = _best_rate(lambda: dst.copy_(src), 2.0 * src.numel() * 4, repeats=repeats,
                                      timer=cuda_event_timer)
    peaks["device"] = torch.cuda.get_device_name(0)
    return peaks


def peak_for(row: dict[str, Any], peaks: dict[str, dict[str, Any]]) -> tuple[str, float] | None:
    """The peak a row is held against: ``("cpu.int8", GOP/s)`` for an INT8 graph on the CPU, etc."""
    device = "cuda" if str(row.get("device", "cpu")).startswith("cuda") else "cpu"
    table = peaks.get(device)
    if not table:
        return None
    precision = row.get("precision", "fp32")
    if precision in ("int8", "mixed"):
        key = "int8_gops"
    elif device == "cuda" and precision == "fp8":  # no FP8 probe: held against INT8's rate (same on Hopper)
        key = "int8_gops"
    elif device == "cuda" and precision in ("tf32", "fp16", "bf16"):
        key = f"{precision}_gflops"
    elif precision == "bf16" and "bf16_gflops" in table:  # OpenVINO's BF16 on a CPU with native BF16
        key = "bf16_gflops"
    else:  # FP32, and FP16 on a CPU (ONNX Runtime computes most of an FP16 graph in FP32 there)
        key = "fp32_gflops"
    value = table.get(key)
    return None if value is None else (f"{device}.{key.split('_')[0]}", float(value))


def attach_roofline(rows: list[dict[str, Any]], peaks: dict[str, dict[str, Any]]) -> None:
    """Add ``achieved_gflops``, ``peak_name``, ``peak_gflops``, ``peak_fraction`` and ``intensity`` to
    every row that carries ``gflops_per_image`` (``intensity``: FLOPs per byte of the minimum traffic
    of one call, the weights once plus the input and output tensors)."""
    for row in rows:
        gflops = row.get("gflops_per_image")
        if not gflops or not row.get("p50_ms"):
            continue
        row["achieved_gflops"] = gflops * row["batch"] / (row["p50_ms"] / 1000.0)
        weights = row.get("parameters", 0) * BYTES_PER_PARAM.get(row.get("precision", "fp32"), 4)
        traffic = weights + row["batch"] * row.get("io_bytes_per_image", 0)
        row["intensity"] = gflops * 1e9 * row["batch"] / traffic if traffic else None
        peak = peak_for(row, peaks)
        if peak is not None:
            row["peak_name"], row["peak_gflops"] = peak
            row["peak_fraction"] = row["achieved_gflops"] / peak[1]
