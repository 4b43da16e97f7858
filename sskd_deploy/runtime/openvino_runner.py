"""OpenVINO behind the Runner interface: the deploy graph on Intel's CPU runtime.

Takes the exported ONNX graph (FP32, or the INT8 Q/DQ graph, which OpenVINO runs with integer
kernels) or an OpenVINO IR (``.xml`` with its ``.bin`` beside it, e.g. from
:func:`sskd_deploy.export.openvino_int8.quantize_openvino`). The IOSpec comes from the ONNX metadata or
the IR's rt_info (:mod:`sskd_deploy.runtime.openvino_metadata`); a graph without one is refused.

Precision is said, and then checked. ``precision`` is OpenVINO's ``INFERENCE_PRECISION_HINT`` for
float layers and is always set: left unset, the CPU plugin picks bf16 by itself on any CPU with
bf16 instructions (checked here: the default hint on this AVX-512-BF16 EPYC is ``bfloat16``), which
would make an "FP32" row silently a BF16 one. After compiling, the runner reads which precision
each compute layer really ran in (:func:`precision_census`) and reports the majority as
``info.precision``: a quantized graph whose int8 layers OpenVINO decided to run in float, or a bf16
hint on a CPU without bf16, shows up as such.

One static-shape model per batch size, compiled on first use and cached (at most
:data:`MAX_COMPILED` sizes), rather than one model with a dynamic batch dimension. Measured on
student-tiny (192x256, random weights, FP32 ONNX graph, medians, interleaved runs) on this 2-core EPYC:

======================  ============  ============  ============  ============
                        b1 dynamic    b1 static     b4 dynamic    b4 static
======================  ============  ============  ============  ============
f32 hint, 2 threads     21.6 ms       18.4 ms       65.6 ms       61.5 ms
bf16 hint, 2 threads    13.9 ms       10.9 ms       36.6 ms       31.9 ms
f32 hint, 1 thread      30.0 ms       27.0 ms       107.5 ms      101.9 ms
======================  ============  ============  ============  ============

Static shapes let the CPU plugin pick fixed-shape kernels and plan memory once: 6-22 % faster, same
outputs (max difference 1e-5). The price is one compilation (~1.2 s for student-tiny) the first time
each batch size is seen, and its memory while cached.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from sskd_deploy.errors import InputError
from sskd_deploy.runtime.base import Outputs, RunnerInfo, check_images, check_outputs
from sskd_deploy.runtime.openvino_metadata import KEY_PRECISION, get_ir_metadata, read_ir_spec
from sskd_deploy.spec import IOSpec

PRECISION_HINTS = ("f32", "bf16")
# Layer types (as the CPU plugin names them in its runtime model) that do the arithmetic; the
# precision they run in is the one that decides speed and accuracy. Besides the plain ones, the
# plugin has fused attention / MLP forms, and variants named by prefix (FullyConnectedQuantizedLegacy,
# FullyConnectedCompressed, ...), which :func:`is_compute_layer` accepts too.
COMPUTE_LAYER_TYPES = frozenset({"Convolution", "GroupConvolution", "Deconvolution", "ConvolutionBackpropData",
                                 "FullyConnected", "MatMul", "Gemm", "ScaledDotProductAttention", "MHA",
                                 "LLMMLP", "QKVProjection"})
COMPUTE_LAYER_PREFIXES = ("FullyConnected", "Convolution", "MatMul")
# OpenVINO element types -> the project's precision words
PRECISION_WORDS = {"i8": "int8", "u8": "int8", "bf16": "bf16", "f16": "fp16", "f32": "fp32"}
MAX_COMPILED = 8  # batch sizes kept compiled at once (each holds its own packed weights)


def is_compute_layer(layer_type: str) -> bool:
    return layer_type in COMPUTE_LAYER_TYPES or layer_type.startswith(COMPUTE_LAYER_PREFIXES)


def precision_census(compiled: Any) -> dict[str, dict[str, int]]:
    """``{layer type: {runtime precision: count}}`` over the compute layers of a compiled model,
    e.g. ``{"Convolution": {"u8": 45}, "FullyConnected": {"i8": 100, "f32": 6}}``."""
    census: dict[str, Counter] = defaultdict(Counter)
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer_type = info["layerType"].astype(str)
        if is_compute_layer(layer_type):
            census[layer_type][info["runtimePrecision"].astype(str)] += 1
    return {layer: dict(sorted(counts.items())) for layer, counts in sorted(census.items())}


def dominant_precision(census: dict[str, dict[str, int]]) -> str:
    """The precision most compute layers ran in, in the project's words (``int8``, ``bf16``, ``fp32``...)."""
    totals: Counter = Counter()
    for counts in census.values():
        for element, count in counts.items():
            totals[PRECISION_WORDS.get(element, element)] += count
    if not totals:
        return "unknown"
    return min(totals.items(), key=lambda item: (-item[1], item[0]))[0]  # ties: alphabetical, deterministic


@dataclass
class _Compiled:
    """One compiled static-batch model and its idle infer requests (a request serves one call at a time)."""

    model: Any
    idle: list[Any] = field(default_factory=list)


class OpenVINORunner:
    """Runs the ONNX graph or OpenVINO IR at ``path`` on OpenVINO's CPU plugin.

    ``run(images)``: uint8 ``(B, 3, H, W)`` -> ``(scores (B, K) f32, labels (B, K) i64,
    mask_logits (B, K, H/4, W/4) f32)``, outputs matched to the IOSpec by name. ``threads``:
    ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default, all cores). ``precision``: the
    ``INFERENCE_PRECISION_HINT`` for float layers, ``"f32"`` or ``"bf16"``. Safe to call from several
    threads: each call borrows its own infer request.
    """

    def __init__(self, path: str | Path, *, name: str | None = None, threads: int | None = None,
                 precision: str = "f32", max_batch: int = 64) -> None:
        if precision not in PRECISION_HINTS:
            raise ValueError(f"precision must be one of {PRECISION_HINTS}, got {precision!r}")
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be positive, got {threads}")
        self.path = Path(path)
        self.max_batch = int(max_batch)
        self._core = ov.Core()
        self._config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
        if threads is not None:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self._model, self.spec, graph_precision = self._read()
        self._check_io()
        self._compiled: OrderedDict[int, _Compiled] = OrderedDict()
        self._lock = threading.Lock()
        census = precision_census(self._get(1).model)
        ran = dominant_precision(census)
        self.info = RunnerInfo(
            name=name or f"openvino-{ran}", backend="openvino", precision=ran, device="cpu",
            provider=self._device_name(), path=str(self.path),
            details={"census": census, "census_batch": 1, "precision_hint": precision, "threads": threads,
                     "performance_hint": "LATENCY", "graph_precision": graph_precision,
                     "static_batch": True, "openvino": ov.get_version()},
        )

    # --- opening -------------------------------------------------------------------------------------------

    def _read(self) -> tuple[Any, IOSpec, str]:
        """The ov.Model, its IOSpec and the precision its file declares."""
        suffix = self.path.suffix.lower()
        if suffix not in (".onnx", ".xml"):
            raise InputError(self.path, "expected an ONNX graph (.onnx) or an OpenVINO IR (.xml)")
        if not self.path.is_file():
            raise InputError(self.path, "model file not found")
        if suffix == ".xml" and not self.path.with_suffix(".bin").is_file():
            raise InputError(self.path, f"the IR's weights {self.path.with_suffix('.bin').name} are not beside it")
        if suffix == ".onnx":  # the exporter's metadata, read the way every ONNX consumer reads it
            from sskd_deploy.runtime.onnx_metadata import load_onnx, read_onnx_spec, read_precision

            onnx_model = load_onnx(self.path, load_weights=False)
            try:
                spec = read_onnx_spec(onnx_model)
            except InputError as err:  # it names "ONNX model"; the user needs the file
                raise InputError(self.path, err.problem) from None
            declared = read_precision(onnx_model)
        model = self._read_model()
        if suffix == ".xml":
            spec = read_ir_spec(model, self.path)
            declared = get_ir_metadata(model).get(KEY_PRECISION, "fp32")
        return model, spec, declared

    def _read_model(self) -> Any:
        try:
            return self._core.read_model(str(self.path))
        except Exception as err:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of its own
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(self.path, f"OpenVINO cannot read the model ({message})") from None

    def _check_io(self) -> None:
        inputs = [sorted(port.get_names()) for port in self._model.inputs]
        if len(inputs) != 1 or self.spec.input_name not in inputs[0]:
            raise InputError(self.path, f"graph inputs {inputs} differ from the IOSpec's {self.spec.input_name!r}")
        outputs = set().union(*(port.get_names() for port in self._model.outputs))
        missing = [n for n in self.spec.output_names if n not in outputs]
        if missing:
            raise InputError(self.path, f"graph has no output(s) {missing} that the IOSpec names")

    def _device_name(self) -> str:
        try:
            return str(self._core.get_property("CPU", "FULL_DEVICE_NAME")) or "CPU"
        except Exception:  # noqa: BLE001 - a plugin without the property
            return "CPU"

    def _compile(self, batch: int, extra: dict[str, Any] | None = None) -> Any:
        model = self._model.clone()  # reshape works in place; the dynamic original stays for other sizes
        model.reshape({self.spec.input_name: [batch, 3, *self.spec.input_size]})
        return self._core.compile_model(model, "CPU", {**self._config, **(extra or {})})

    def _get(self, batch: int) -> _Compiled:
        """The compiled model for ``batch`` (compiling it on first use); callers hold no lock."""
        with self._lock:
            entry = self._compiled.get(batch)
            if entry is None:
                entry = self._compiled[batch] = _Compiled(self._compile(batch))
                while len(self._compiled) > MAX_COMPILED:
                    self._compiled.popitem(last=False)
            self._compiled.move_to_end(batch)
            return entry

    # --- running -------------------------------------------------------------------------------------------

    def run(self, images: np.ndarray) -> Outputs:
        images = check_images(self.spec, images, max_batch=self.max_batch)
        if self._model is None:
            raise RuntimeError(f"{self!r} was closed")
        entry = self._get(images.shape[0])
        with self._lock:
            request = entry.idle.pop() if entry.idle else entry.model.create_infer_request()
        try:
            request.infer({self.spec.input_name: images}, share_inputs=True)
            # copies: the request reuses its output buffers on its next call
            outputs = [np.array(request.get_tensor(name).data) for name in self.spec.output_names]
        finally:
            with self._lock:
                entry.idle.append(request)
        return check_outputs(self.spec, outputs, images.shape[0])

    def profile(self, images: np.ndarray, *, top: int = 15, repeats: int = 5) -> list[dict[str, Any]]:
        """Where the time goes: OpenVINO's per-layer counters over ``repeats`` runs of ``images``.

        Compiles a separate model with ``PERF_COUNT`` (counters cost a little time, so :meth:`run`
        never uses them), runs once to warm up, then ``repeats`` times. Returns rows of two groups,
        each sorted by time, slowest first::

            {"group": "layer", "name": str, "layer_type": str, "exec_type": str,
             "ms": float, "percent": float, "count": 1}
            ...                                  # the ``top`` slowest executed layers
            {"group": "layer_type", "name": str, "layer_type": str, "exec_type": str,
             "ms": float, "percent": float, "count": int}
            ...                                  # every layer type, summed over its layers

        ``ms`` is the mean real time per run, ``percent`` its share of the summed time of all executed
        layers (``top`` does not change it), ``exec_type`` the kernel OpenVINO chose (e.g.
        ``brgconv_avx512_I8``; for a layer type, its kernels by time, comma-separated), ``count`` the
        layers behind a row. ``top=None`` keeps every layer.
        """
        images = check_images(self.spec, images, max_batch=self.max_batch)
        if repeats < 1:
            raise ValueError(f"repeats must be positive, got {repeats}")
        request = self._compile(images.shape[0], {"PERF_COUNT": True}).create_infer_request()
        request.infer({self.spec.input_name: images}, share_inputs=True)
        times: dict[str, float] = defaultdict(float)
        kinds: dict[str, tuple[str, str]] = {}
        for _ in range(repeats):
            request.infer({self.spec.input_name: images}, share_inputs=True)
            for item in request.get_profiling_info():
                if item.status == ov.ProfilingInfo.Status.EXECUTED:
                    times[item.node_name] += item.real_time.total_seconds() * 1e3 / repeats
                    kinds[item.node_name] = (item.node_type, item.exec_type)
        return _profile_rows(times, kinds, top)

    def close(self) -> None:
        """Drop the compiled models so their memory is released now, not at garbage collection."""
        with self._lock:
            self._compiled.clear()
        self._model = None

    def __repr__(self) -> str:
        return (f"OpenVINORunner({str(self.path)!r}, name={self.info.name!r}, "
                f"precision_hint={self.info.details['precision_hint']!r})")


def _profile_rows(times: dict[str, float], kinds: dict[str, tuple[str, str]], top: int | None) -> list[dict[str, Any]]:
    total = sum(times.values()) or 1.0

    def row(group: str, name: str, layer_type: str, exec_type: str, ms: float, count: int) -> dict[str, Any]:
        return {"group": group, "name": name, "layer_type": layer_type, "exec_type": exec_type,
                "ms": round(ms, 4), "percent": round(100 * ms / total, 2), "count": count}

    layers = sorted(times.items(), key=lambda item: (-item[1], item[0]))
    rows = [row("layer", name, *kinds[name], ms, 1) for name, ms in (layers if top is None else layers[:top])]
    by_type: dict[str, Counter] = defaultdict(Counter)
    counts: Counter = Counter()
    for name, ms in times.items():
        layer_type, exec_type = kinds[name]
        by_type[layer_type][exec_type] += ms
        counts[layer_type] += 1
    for layer_type, execs in sorted(by_type.items(), key=lambda item: (-sum(item[1].values()), item[0])):
        exec_types = ", ".join(e for e, _ in sorted(execs.items(), key=lambda item: (-item[1], item[0])))
        rows.append(row("layer_type", layer_type, layer_type, exec_types, sum(execs.values()), counts[layer_type]))
    return rows
