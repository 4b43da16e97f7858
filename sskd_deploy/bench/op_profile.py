"""Top ops by time for one runner (``bench --profile RUNNER``): where an INT8 graph's time really goes.

ONNX Runtime runners are profiled with ONNX Runtime's own profiler (per-kernel times of the
optimised graph: a Q/DQ pair ORT could not fold shows up as QuantizeLinear/DequantizeLinear time
and a float Conv); OpenVINO runners with OpenVINO's performance counters (per executed layer, with
the kernel and precision it ran in). Both are summarised the same way: the top op types and the
top nodes, in milliseconds per call at batch 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PROFILE_FORMAT = "sskd-deploy/op-profile"


def profile_runner(runner: Any, images: np.ndarray, *, threads: int | None, top: int = 15) -> dict[str, Any]:
    """``{"format", "runner", "backend", "precision", "path", "batch", "by_op_type", "top_nodes", "total_ms"}``
    for an ONNX Runtime or OpenVINO runner; a ValueError for any other backend (PyTorch has its own profiler)."""
    backend = runner.info.backend
    if backend == "onnxruntime":
        from sskd_deploy.runtime.onnxruntime_runner import profile_ort

        summary = profile_ort(runner.path, images, threads=threads, top=top)
    elif backend == "openvino":
        summary = _openvino_summary(runner.profile(images, top=top))
    else:
        raise ValueError(f"{runner.info.name}: --profile covers ONNX Runtime and OpenVINO runners, not {backend}")
    return {"format": PROFILE_FORMAT, "runner": runner.info.name, "backend": backend,
            "precision": runner.info.precision, "path": runner.info.path, "batch": int(images.shape[0]), **summary}


def _openvino_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """OpenVINO's counter rows (:meth:`OpenVINORunner.profile`) in the same shape as ONNX Runtime's summary;
    an op type reads ``Convolution [brgconv_avx512_I8]``: the kernel says which precision really ran."""
    types = [r for r in rows if r["group"] == "layer_type"]
    return {"runs": None, "total_ms": round(sum(r["ms"] for r in types), 3),
            "by_op_type": [{"op_type": f"{r['layer_type']} [{r['exec_type']}]", "ms": round(r["ms"], 3),
                            "percent": round(r["percent"], 1), "count": r["count"]} for r in types],
            "top_nodes": [{"name": r["name"], "op_type": f"{r['layer_type']} [{r['exec_type']}]",
                           "ms": round(r["ms"], 3), "percent": round(r["percent"], 1)}
                          for r in rows if r["group"] == "layer"]}
