"""ONNX Runtime behind the Runner interface: any exported graph (FP32, FP16, INT8 Q/DQ) on any provider.

The graph carries its own contract: the IOSpec and the precision are read from the ONNX
metadata the exporter wrote, so the runner needs nothing but the file. The provider that
actually runs is recorded in :attr:`RunnerInfo.provider`, because ONNX Runtime silently drops a
requested GPU provider whose libraries are missing and a report must not call a CPU number a GPU one.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from sskd_deploy.errors import InputError
from sskd_deploy.runtime.base import Outputs, RunnerInfo, check_images, check_outputs
from sskd_deploy.runtime.onnx_metadata import load_onnx, read_onnx_spec, read_precision

CPU = "CPUExecutionProvider"
# Tried in this order when available (the optional onnxruntime-gpu build registers them).
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def resolve_providers(providers: str | Sequence[str] = "auto") -> list[str]:
    """``"auto"``: the GPU providers this onnxruntime build offers, then CPU; a list is taken as given."""
    if isinstance(providers, str):
        if providers != "auto":
            return [providers]
        available = set(ort.get_available_providers())
        return [p for p in GPU_PROVIDERS if p in available] + [CPU]
    return list(providers)


# Graph rewrites left out for FP32 graphs, whose parity budget is tensor-level (1e-3 on scores).
# ORT's NCHWc layout transform (ORT_ENABLE_ALL only) moved a trained student-tiny's mask logits by up
# to 0.28 (of 63) and a score by 0.005 against PyTorch, where every other level agreed to 1e-6; the
# FP32 graph is the faithful reference, so it runs without it (measured 5 % slower at batch 1, 13 %
# at batch 4 on 2 cores). FP16 and INT8 graphs keep it: they are judged by their AP budgets.
FP32_DISABLED_OPTIMIZERS = ("NchwcTransformer",)


def disabled_optimizers(precision: str | None) -> list[str] | None:
    return list(FP32_DISABLED_OPTIMIZERS) if precision == "fp32" else None


def _graph_precision(path: str | Path) -> str | None:
    return read_precision(load_onnx(Path(path), load_weights=False))


def _session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One graph at a time on a small machine: intra-op threads do the work, a second pool only competes.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    # Warnings from ORT's optimiser (e.g. a Resize it cannot constant-fold in FP16 on CPU) are not
    # actionable for a user; real failures raise.
    options.log_severity_level = 3
    return options


class OrtRunner:
    """Runs the ONNX graph at ``path`` with ONNX Runtime.

    ``run(images)``: uint8 ``(B, 3, H, W)`` -> ``(scores (B, K) f32, labels (B, K) i64,
    mask_logits (B, K, H/4, W/4) f32)``; an FP16 graph's outputs are cast to the IOSpec dtypes.
    """

    def __init__(self, path: str | Path, *, name: str | None = None, threads: int | None = None,
                 providers: str | Sequence[str] = "auto", max_batch: int = 64) -> None:
        self.path = Path(path)
        model = load_onnx(self.path, load_weights=False)  # InputError naming the file if missing/corrupt
        try:
            self.spec = read_onnx_spec(model)
        except InputError as err:  # it names "ONNX model"; the user needs the file
            raise InputError(self.path, err.problem) from None
        precision = read_precision(model)
        requested = resolve_providers(providers)
        self.session = self._open(requested, threads, precision)
        actual = self.session.get_providers()
        self._warn_on_fallback(requested, actual)
        self.max_batch = int(max_batch)
        device = "cpu" if actual[0] == CPU else "cuda:0"
        self.info = RunnerInfo(
            name=name or f"onnxruntime-{precision}", backend="onnxruntime", precision=precision, device=device,
            provider=actual[0], path=str(self.path),
            details={"providers": actual, "threads": threads, "onnxruntime": ort.__version__},
        )
        self._output_names = list(self.spec.output_names)

    def _open(self, providers: list[str], threads: int | None, precision: str | None) -> ort.InferenceSession:
        try:
            with warnings.catch_warnings():
                # ORT's own note on a missing provider; _warn_on_fallback says it with the outcome
                warnings.filterwarnings("ignore", message="Specified provider", category=UserWarning)
                return ort.InferenceSession(str(self.path), sess_options=_session_options(threads),
                                            providers=providers, disabled_optimizers=disabled_optimizers(precision))
        except Exception as err:  # noqa: BLE001 - ORT raises Fail, InvalidGraph, NoSuchFile... unrelated classes
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(self.path, f"ONNX Runtime cannot load the graph ({message})") from None

    def _warn_on_fallback(self, requested: list[str], actual: list[str]) -> None:
        missing = [p for p in requested if p != CPU and p not in actual]
        if missing:
            warnings.warn(f"{self.path}: ONNX Runtime did not register {', '.join(missing)}; "
                          f"it fell back to {actual[0]}", RuntimeWarning, stacklevel=3)

    def run(self, images: np.ndarray) -> Outputs:
        images = check_images(self.spec, images, max_batch=self.max_batch)
        if self.session is None:
            raise RuntimeError(f"{self!r} was closed")
        outputs = self.session.run(self._output_names, {self.spec.input_name: images})
        return check_outputs(self.spec, outputs, images.shape[0])

    def close(self) -> None:
        """Drop the session so its memory (and any GPU context) is released now, not at garbage collection."""
        self.session = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"OrtRunner({str(self.path)!r}, name={self.info.name!r}, provider={self.info.provider!r})"


# What ONNX Runtime's CPU provider runs after its graph optimisations: integer kernels (what a Q/DQ
# graph is for) and float compute kernels (what stayed float, e.g. an S8 activation its S8->U8
# rewrite skipped). Element-wise ops are neither and are not counted.
INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "QGemm", "ConvInteger",
                   "MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "QLinearConvTranspose")
FLOAT_KERNELS = ("Conv", "FusedConv", "ConvTranspose", "MatMul", "FusedMatMul", "Gemm", "FusedGemm",
                 "Attention", "MultiHeadAttention")


def runtime_census(path: str | Path, *, threads: int | None = None) -> dict[str, Any]:
    """Compute kernels ONNX Runtime (CPU) runs for the graph at ``path`` once it has optimised it:
    ``{"integer": {op: n}, "float": {op: n}, "integer_fraction", "quantize_linear", "dequantize_linear"}``.

    This is the census that shows whether a Q/DQ graph really runs in integer: Q/DQ pairs ORT could
    not fold into an integer kernel leave a float Conv/MatMul between them.
    """
    import onnx

    with tempfile.TemporaryDirectory(prefix="sskd-census-") as tmp:
        options = _session_options(threads)
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        try:
            ort.InferenceSession(str(path), sess_options=options, providers=[CPU],
                                 disabled_optimizers=disabled_optimizers(_graph_precision(path)))
        except Exception as err:  # noqa: BLE001 - see OrtRunner._open
            raise InputError(path, f"ONNX Runtime cannot load the graph ({str(err).strip().splitlines()[0]})") from None
        counts = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    integer = {op: counts[op] for op in INTEGER_KERNELS if counts[op]}
    floats = {op: counts[op] for op in FLOAT_KERNELS if counts[op]}
    total = sum(integer.values()) + sum(floats.values())
    return {"integer": integer, "float": floats, "integer_fraction": round(sum(integer.values()) / total, 4) if total else 0.0,
            "quantize_linear": counts["QuantizeLinear"], "dequantize_linear": counts["DequantizeLinear"]}


def profile_ort(path: str | Path, images: np.ndarray, *, threads: int | None = None, runs: int = 3,
                top: int = 15) -> dict[str, Any]:
    """Top ops by time for one graph, from ONNX Runtime's own profiler over ``runs`` calls (after one
    warm-up call, which is excluded).

    Returns ``{"runs", "total_ms", "by_op_type": [{"op_type", "ms", "percent", "count"}],
    "top_nodes": [{"name", "op_type", "ms", "percent"}]}`` with times per run, sorted by time.
    """
    with tempfile.TemporaryDirectory(prefix="sskd-profile-") as tmp:
        options = _session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), sess_options=options, providers=[CPU],
                                       disabled_optimizers=disabled_optimizers(_graph_precision(path)))
        name = session.get_inputs()[0].name
        for _ in range(1 + runs):  # ORT's profiler cannot be reset: the warm-up call is dropped by its index
            session.run(None, {name: images})
        trace = json.loads(Path(session.end_profiling()).read_text())
    return summarise_profile(_kernel_events(trace, skip_runs=1), runs=runs, top=top)


def _kernel_events(trace: list[dict[str, Any]], *, skip_runs: int) -> list[tuple[str, str, float]]:
    """``(node name, op type, microseconds)`` of every kernel in the trace after the first ``skip_runs`` runs."""
    runs = sorted(e["ts"] for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run")
    start = runs[skip_runs] if len(runs) > skip_runs else 0
    return [(e["name"].removesuffix("_kernel_time"), e["args"].get("op_name", "?"), float(e["dur"]))
            for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start]


def summarise_profile(events: Sequence[tuple[str, str, float]], *, runs: int, top: int) -> dict[str, Any]:
    """Per-run milliseconds by op type and by node from ``(name, op type, microseconds)`` events."""
    total = sum(us for _, _, us in events) or 1.0
    by_type: dict[str, list[float]] = {}
    by_node: dict[tuple[str, str], float] = Counter()
    for name, op, us in events:
        by_type.setdefault(op, []).append(us)
        by_node[(name, op)] += us
    types = sorted(({"op_type": op, "ms": round(sum(v) / runs / 1000, 3), "percent": round(100 * sum(v) / total, 1),
                     "count": len(v) // max(runs, 1)} for op, v in by_type.items()), key=lambda r: -r["ms"])
    nodes = sorted(({"name": n, "op_type": op, "ms": round(us / runs / 1000, 3), "percent": round(100 * us / total, 1)}
                    for (n, op), us in by_node.items()), key=lambda r: -r["ms"])
    return {"runs": runs, "total_ms": round(total / runs / 1000, 3), "by_op_type": types[:top], "top_nodes": nodes[:top]}
