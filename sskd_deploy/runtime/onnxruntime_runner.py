"""ONNX Runtime behind the Runner interface: any exported graph (FP32, FP16, INT8 Q/DQ) on any provider.

The graph carries its own contract: the IOSpec and the precision are read from the ONNX
metadata the exporter wrote, so the runner needs nothing but the file. The provider that
actually runs is recorded in :attr:`RunnerInfo.provider`, because ONNX Runtime silently drops a
requested GPU provider whose libraries are missing and a report must not call a CPU number a GPU one.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

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
        self.session = self._open(requested, threads)
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

    def _open(self, providers: list[str], threads: int | None) -> ort.InferenceSession:
        try:
            with warnings.catch_warnings():
                # ORT's own note on a missing provider; _warn_on_fallback says it with the outcome
                warnings.filterwarnings("ignore", message="Specified provider", category=UserWarning)
                return ort.InferenceSession(str(self.path), sess_options=_session_options(threads),
                                            providers=providers)
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
