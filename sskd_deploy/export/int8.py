"""INT8 by explicit quantization: an FP32 deploy graph in, a Q/DQ graph per target out.

Calibrate once, emit one graph per target (METHOD.md section 7); both come from the same cached
ranges, so the second graph costs seconds:

``tensorrt`` (``model_int8_tensorrt.onnx``)
    TensorRT's explicit-quantization rules (checked on every output by
    :mod:`sskd_deploy.export.qdq_rules`): signed int8 activations and weights, zero points 0,
    per-channel weights, per-tensor activations, biases left in float (TensorRT rejects an int32
    DequantizeLinear). OpenVINO also runs this graph in integer.
``cpu`` (``model_int8.onnx``)
    ONNX Runtime on x86: its fast integer kernels (VNNI, AMX) take **U8 activations x S8
    weights**. A signed activation reaches them only through an internal S8->U8 rewrite that skips
    every QuantizeLinear with more than one consumer, so the symmetric graph leaves a third of the
    convolutions and most linear layers in float between standalone Q/DQ nodes. So: asymmetric
    uint8 activations, symmetric per-channel int8 weights, int32 biases. Measured on the 2-core
    AVX-512-VNNI machine (random student-s, 512x1024, batch 1, one ``bench`` run): symmetric graph
    2170 ms, this one 1832 ms, FP32 3219 ms, PyTorch eager 3306 ms; ONNX Runtime's runtime census
    (:func:`sskd_deploy.runtime.onnxruntime_runner.runtime_census`) goes from 24 of 32 convs and 180
    of 263 linear/attention products in integer kernels to all of them (only the two unquantized
    ConvTranspose stay float), and from 263 DequantizeLinear nodes left standing to 60.

What is quantized, for both: Conv, MatMul and Gemm, i.e. all the arithmetic that int8 makes faster
(the ViT encoder's linear layers and attention products, the decoder's convolutions, the
transformer decoder). Q/DQ goes on the *inputs* of MatMul/Gemm only (ORT then runs DQ -> MatMul as
MatMulIntegerToFloat: measured 1806 ms against 2106 ms with output Q/DQ too on student-s), and
Conv keeps its output Q (ORT's CPU provider only forms QLinearConv from DQ -> Conv -> Q).
Element-wise ops, normalisations, Softmax and Resize stay float: int8 gains nothing there (TensorRT
fuses them into the neighbouring kernels) and each extra Q/DQ pair adds rounding. ConvTranspose (two
small upsampling layers) stays float: quantized, ONNX Runtime 1.32's CPU provider still runs it as
DQ -> float ConvTranspose -> Q. The deploy wrapper's selection tail (``/select/...``: softmax,
top-k, gathers) is never quantized.

Transformer fusions before quantization were measured and are not applied: onnxscript's
``ort_fusions.optimize_for_ort`` (0.7) fuses the encoder's attention into ``Attention`` nodes, which
takes the QKV projections out of Q/DQ quantization, and its FusedMatMul rewrite produced a graph
ONNX Runtime 1.32 refuses to run on student-tiny (rank mismatch in a transposed batch MatMul).

Calibration ranges are cached in ``cache_dir/<calibration_key>.json`` (ONNX Runtime's own cache
format); the key covers the graph, the image contents, preprocessing and method, not the target
(the ranges are the same), so a mixed-precision search or the second target never recalibrates.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import tempfile
import time
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from sskd_deploy.errors import InputError
from sskd_deploy.export.calibration import CalibrationSelection, ImageCalibrationReader, calibration_key
from sskd_deploy.export.onnx_export import check_against_spec
from sskd_deploy.export.qdq_graph import (
    count_quantized,
    drop_dangling,
    graph_census,
    keep_float_inputs,
    restore_module_prefixes,
)
from sskd_deploy.export.qdq_rules import check_qdq_for_tensorrt
from sskd_deploy.io import atomic_write_bytes
from sskd_deploy.provenance import hash_file
from sskd_deploy.runtime.onnx_metadata import (
    META_CHECKPOINT,
    contract_metadata,
    get_metadata,
    load_onnx,
    read_onnx_spec,
    set_metadata,
)
from sskd_deploy.spec import IOSpec

QUANT_OP_TYPES = ("Conv", "MatMul", "Gemm")
TAIL_PREFIX = "/select/"
INT8_TARGETS = ("cpu", "tensorrt")
METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}


def prepare_for_quantization(fp32_path: str | Path, out_path: str | Path) -> onnx.ModelProto:
    """ONNX Runtime's pre-processing (basic graph optimisation + ONNX shape inference), names restored.

    Symbolic shape inference is skipped: it fails on this graph (an Expand whose shape is
    computed at run time leaves a Where without a shape), and it is not needed: the exporter
    already ran strict ONNX shape inference, so every Conv/MatMul/Gemm input has a known shape.
    """
    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    model = onnx.load(str(out_path))
    restore_module_prefixes(model)
    onnx.save(model, str(out_path))
    return model


def quantizable_nodes(model: onnx.ModelProto, op_types: Collection[str] = QUANT_OP_TYPES) -> list[str]:
    """Names of the nodes quantization would touch (selection tail excluded), in graph order."""
    return [n.name for n in model.graph.node if n.op_type in op_types and not n.name.startswith(TAIL_PREFIX)]


def _method_params(method: str, percentile: float, op_types: Sequence[str], batch_size: int) -> dict[str, Any]:
    """Everything besides graph and images that changes the calibrated ranges (part of the cache key)."""
    import onnxruntime

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {sorted(METHODS)}")
    params: dict[str, Any] = {"op_types": sorted(op_types), "batch_size": batch_size,
                              "onnxruntime": onnxruntime.__version__}
    if method == "percentile":
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        params["percentile"] = float(percentile)
    return params


@dataclass(frozen=True)
class TargetRules:
    """What differs between the two INT8 graphs (see the module docstring)."""

    activation: QuantType
    extra: dict[str, Any]
    tensorrt_rules: bool  # check the output against TensorRT's explicit-quantization rules


TARGET_RULES = {
    "tensorrt": TargetRules(QuantType.QInt8, {
        "ActivationSymmetric": True, "WeightSymmetric": True,
        # TensorRT's parser rejects an int32 DequantizeLinear, which is how ORT quantizes biases
        "QuantizeBias": False,
        # TensorRT's recommended placement: Q/DQ on the inputs of MatMul/Gemm only
        "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}, tensorrt_rules=True),
    "cpu": TargetRules(QuantType.QUInt8, {
        "ActivationSymmetric": False, "WeightSymmetric": True,
        "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}, tensorrt_rules=False),
}


def target_rules(target: str) -> TargetRules:
    if target not in TARGET_RULES:
        raise ValueError(f"unknown INT8 target {target!r}; choose one of {list(TARGET_RULES)}")
    return TARGET_RULES[target]


def _extra_options(method_params: dict[str, Any], rules: TargetRules) -> dict[str, Any]:
    extra = dict(rules.extra)
    if "percentile" in method_params:
        extra["CalibPercentile"] = method_params["percentile"]
    return extra


def _finish(model: onnx.ModelProto, fp32: onnx.ModelProto, spec: IOSpec, precision: str, path: Path,
            rules: TargetRules) -> None:
    """Restore names and the deploy contract, check against IOSpec (and TensorRT's rules for its graph),
    write atomically."""
    restore_module_prefixes(model)
    checkpoint = get_metadata(fp32).get(META_CHECKPOINT, "")
    set_metadata(model, contract_metadata(spec, checkpoint_sha256=checkpoint, precision=precision))
    onnx.checker.check_model(model)
    check_against_spec(model, spec, source=str(path))
    problems = check_qdq_for_tensorrt(model) if rules.tensorrt_rules else []
    if problems:  # a graph TensorRT would reject must not look finished
        raise RuntimeError(f"{path}: Q/DQ graph breaks TensorRT's rules: " + "; ".join(problems[:5]))
    atomic_write_bytes(path, model.SerializeToString())


def _calibrate_and_quantize(pre_path: Path, out_path: Path, reader: ImageCalibrationReader | None,
                            cache: Path, method: str, excluded: list[str], op_types: Sequence[str],
                            extra: dict[str, Any], activation: QuantType) -> None:
    """``quantize_static``; on a miss ORT writes the ranges to a temporary name, renamed into place after."""
    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise RuntimeError("this onnxruntime has no calibration cache in quantize_static; install onnxruntime>=1.32")
    target = cache if reader is None else cache.with_name(f".{cache.stem}.{os.getpid()}.tmp.json")
    try:
        quantize_static(str(pre_path), str(out_path), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(op_types), per_channel=True, reduce_range=False,
                        activation_type=activation, weight_type=QuantType.QInt8,
                        nodes_to_exclude=excluded, calibrate_method=METHODS[method], extra_options=extra,
                        calibration_cache_path=str(target))
        if reader is not None:
            os.replace(target, cache)
    finally:
        if reader is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)


def _quantize(fp32_path: Path, selection: CalibrationSelection, spec: IOSpec, *, method: str,
              params: dict[str, Any], cache: Path, hit: bool, exclude_nodes: Collection[str], batch_size: int,
              op_types: Sequence[str], rules: TargetRules) -> tuple[onnx.ModelProto, int, int]:
    """Pre-process, calibrate (unless ``hit``) and quantize; returns the model, calibration batches
    run and inputs of float nodes restored to float."""
    with tempfile.TemporaryDirectory(prefix="sskd-int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        names = {n.name for n in prepare_for_quantization(fp32_path, prepared).graph.node}
        unknown = sorted(set(exclude_nodes) - names)
        if unknown:
            raise ValueError(f"exclude_nodes not in the graph: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        float_nodes = {n for n in names if n.startswith(TAIL_PREFIX)} | set(exclude_nodes)
        reader = None if hit else ImageCalibrationReader(selection, spec, batch_size=batch_size)
        try:
            _calibrate_and_quantize(prepared, quantized, reader, cache, method, sorted(float_nodes), op_types,
                                    _extra_options(params, rules), rules.activation)
        except (ValueError, KeyError, TypeError) as err:
            if not hit:
                raise
            raise InputError(cache, f"unusable calibration cache ({type(err).__name__}: {err}); "
                                    "delete it or pass recalibrate") from None
        model = onnx.load(str(quantized))
    rewired = keep_float_inputs(model, float_nodes)
    drop_dangling(model)
    return model, reader.batches_served if reader else 0, rewired


def quantize_int8(fp32_path: str | Path, out_path: str | Path, *, selection: CalibrationSelection, spec: IOSpec,
                  method: str = "minmax", percentile: float = 99.99, cache_dir: str | Path,
                  recalibrate: bool = False, exclude_nodes: Collection[str] = (), batch_size: int = 8,
                  op_types: Sequence[str] = QUANT_OP_TYPES, target: str = "tensorrt") -> dict[str, Any]:
    """Quantize ``fp32_path`` to the INT8 Q/DQ graph of ``target`` at ``out_path`` (written atomically).

    ``exclude_nodes`` names nodes (as in :func:`prepare_for_quantization`'s graph) kept in float;
    with any, the precision recorded in the metadata is ``mixed``. ``recalibrate`` ignores and
    overwrites a cached calibration. Returns the manifest entry.
    """
    start = time.perf_counter()
    rules = target_rules(target)
    fp32_path, out_path, cache_dir = Path(fp32_path), Path(out_path), Path(cache_dir)
    fp32 = load_onnx(fp32_path)
    if read_onnx_spec(fp32).digest() != spec.digest():
        raise InputError(fp32_path, "the IOSpec in this graph's metadata differs from the one given")
    params = _method_params(method, percentile, op_types, batch_size)
    key = calibration_key(hash_file(fp32_path), selection, spec.input_size, method, params)
    cache = cache_dir / f"{key}.json"
    hit = cache.is_file() and not recalibrate
    cache_dir.mkdir(parents=True, exist_ok=True)
    model, batches, rewired = _quantize(fp32_path, selection, spec, method=method, params=params, cache=cache, hit=hit,
                                        exclude_nodes=exclude_nodes, batch_size=batch_size, op_types=op_types,
                                        rules=rules)
    quantized = count_quantized(model, op_types)
    precision = "int8" if not exclude_nodes else "mixed" if quantized["quantized"] else "fp32"
    _finish(model, fp32, spec, precision, out_path, rules)
    ops = Counter(n.op_type for n in model.graph.node)
    return {"target": target, "precision": precision, "method": method, "params": params, "calibration_key": key,
            "cache_path": str(cache), "cache_hit": hit, "calibration_batches": batches,
            "calibration_images": len(selection.images), "excluded_nodes": sorted(exclude_nodes),
            "float_inputs_restored": rewired, "quantized_ops": quantized, "quantize_nodes": ops["QuantizeLinear"],
            "dequantize_nodes": ops["DequantizeLinear"], "census": graph_census(model),
            "wall_s": round(time.perf_counter() - start, 3)}
