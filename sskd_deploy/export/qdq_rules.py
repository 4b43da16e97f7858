"""Static check that a Q/DQ ONNX graph follows TensorRT's explicit-quantization rules.

TensorRT cannot run here (DESIGN.md section 1), so this is the part of "it builds" we can test
on a CPU: the rules below are the ones TensorRT's ONNX parser and builder enforce for
explicitly quantized networks (developer guide, "Explicit Quantization" and the
IQuantizeLayer / IDequantizeLayer references):

- INT8 is signed and symmetric: quantized type int8, every zero point 0 (or absent).
- Scales and zero points are build-time constants; scales strictly positive (and finite).
- Activations are quantized per tensor (scalar scale); only weights may be per channel, and then
  along their output-channel axis: 0 for Conv weights (K, C, R, S), 1 for ConvTranspose weights
  (C, K/g, R, S) and for MatMul / Gemm B of shape (K, N), 0 for Gemm with ``transB=1``.
- A DequantizeLinear input is int8: an int32 bias DQ (ONNX Runtime's default bias handling) is
  rejected by the parser ("only activation types allowed as input to this layer").
- Every QuantizeLinear output feeds DequantizeLinear nodes only, with the same scale.
- Opset >= 13, where QuantizeLinear / DequantizeLinear gained the per-axis form.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

MIN_QDQ_OPSET = 13
INT8 = onnx.TensorProto.INT8


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _weight_axis(consumer: onnx.NodeProto, rank: int) -> int | None:
    """The output-channel axis TensorRT expects for a weight feeding ``consumer`` (input 1)."""
    if consumer.op_type == "Conv":
        return 0
    if consumer.op_type == "ConvTranspose":
        return 1
    if consumer.op_type == "MatMul":
        return rank - 1
    if consumer.op_type == "Gemm":
        return 0 if _attr(consumer, "transB", 0) else 1
    return None


class _Graph:
    """Indexes of one graph: initializers by name, producers and consumers by tensor name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.inits = {i.name: i for i in model.graph.initializer}
        self.producer = {out: n for n in model.graph.node for out in n.output}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        for n in model.graph.node:
            for index, name in enumerate(n.input):
                self.consumers[name].append((n, index))
        self.outputs = {o.name for o in model.graph.output}

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None


def _check_params(node: onnx.NodeProto, g: _Graph) -> list[str]:
    """Scale and zero point of one Q or DQ node: constant, positive and finite, zero-valued int8."""
    where = f"{node.op_type} {node.name!r}"
    problems = []
    scale = g.constant(node.input[1])
    if scale is None:
        problems.append(f"{where}: scale {node.input[1]!r} is not a constant initializer")
    elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        problems.append(f"{where}: scale must be positive and finite, got min {float(np.min(scale)):g}")
    if len(node.input) > 2 and node.input[2]:
        zero = g.constant(node.input[2])
        zp_init = g.inits.get(node.input[2])
        if zero is None:
            problems.append(f"{where}: zero point {node.input[2]!r} is not a constant initializer")
        elif np.any(zero != 0):
            problems.append(f"{where}: zero point must be 0 (TensorRT is symmetric only), got {zero.ravel()[:4].tolist()}")
        if zp_init is not None and zp_init.data_type != INT8:
            problems.append(f"{where}: quantized type {onnx.TensorProto.DataType.Name(zp_init.data_type)}, "
                            "TensorRT INT8 needs int8")
    elif node.op_type == "QuantizeLinear":  # without a zero point ONNX quantizes to uint8
        problems.append(f"{where}: no zero point, so the quantized type is uint8; TensorRT needs int8")
    return problems


def _check_granularity(node: onnx.NodeProto, g: _Graph) -> list[str]:
    """Per-tensor for activations; per-channel weights only along the consumer's output-channel axis."""
    scale = g.constant(node.input[1])
    if scale is None or scale.size <= 1:
        return []
    where = f"{node.op_type} {node.name!r}"
    weight = g.constant(node.input[0])
    source = g.producer.get(node.input[0])
    if weight is None and node.op_type == "DequantizeLinear" and source is not None and source.op_type == "QuantizeLinear":
        weight = g.constant(source.input[0])  # a float weight quantized in the graph (Q -> DQ)
    if weight is None:
        return [f"{where}: per-channel scale on an activation; TensorRT quantizes activations per tensor"]
    axis = _attr(node, "axis", 1) % weight.ndim
    problems = []
    if node.op_type == "QuantizeLinear":  # its DQ is checked against the consumer
        return problems if scale.size == weight.shape[axis] else [f"{where}: scale size != weight axis {axis}"]
    if scale.ndim != 1 or scale.size != weight.shape[axis]:
        problems.append(f"{where}: {scale.size} scales for axis {axis} of a weight shaped {list(weight.shape)}")
    for consumer, index in g.consumers.get(node.output[0], []):
        wanted = _weight_axis(consumer, weight.ndim) if index == 1 else None
        if wanted is None:
            problems.append(f"{where}: per-channel weight feeds {consumer.op_type} {consumer.name!r} input {index}, "
                            "where TensorRT supports per-tensor only")
        elif axis != wanted:
            problems.append(f"{where}: per-channel axis {axis}, but {consumer.op_type} {consumer.name!r} "
                            f"needs its output-channel axis {wanted}")
    return problems


def _check_pairing(node: onnx.NodeProto, g: _Graph) -> list[str]:
    """A QuantizeLinear feeds only DequantizeLinear nodes with the same scale, and is no graph output."""
    where = f"QuantizeLinear {node.name!r}"
    out = node.output[0]
    consumers = g.consumers.get(out, [])
    if out in g.outputs or not consumers:
        return [f"{where}: output {out!r} leaves the graph quantized; it must feed a DequantizeLinear"]
    problems = []
    q_scale = g.constant(node.input[1])
    for consumer, _ in consumers:
        if consumer.op_type != "DequantizeLinear":
            problems.append(f"{where}: feeds {consumer.op_type} {consumer.name!r}; it must feed a DequantizeLinear")
            continue
        dq_scale = g.constant(consumer.input[1])
        if q_scale is not None and dq_scale is not None and not np.array_equal(q_scale, dq_scale):
            problems.append(f"{where}: its DequantizeLinear {consumer.name!r} uses a different scale")
    return problems


def _check_dq_input(node: onnx.NodeProto, g: _Graph) -> list[str]:
    init = g.inits.get(node.input[0])
    if init is not None and init.data_type != INT8:
        kind = onnx.TensorProto.DataType.Name(init.data_type)
        return [(f"DequantizeLinear {node.name!r}: constant input {init.name!r} is {kind}; TensorRT dequantizes "
                 "int8 only (keep biases in float: quantize_static extra option QuantizeBias=False)")]
    return []


def check_qdq_for_tensorrt(model: onnx.ModelProto) -> list[str]:
    """Human-readable violations of TensorRT's explicit-quantization rules; empty when the graph is fine."""
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_QDQ_OPSET:
        problems.append(f"opset {opset} < {MIN_QDQ_OPSET}: per-axis QuantizeLinear/DequantizeLinear need opset 13")
    g = _Graph(model)
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.op_type} {node.name!r}: domain {node.domain!r}; TensorRT parses only the ONNX ops")
        problems += _check_params(node, g) + _check_granularity(node, g)
        problems += _check_pairing(node, g) if node.op_type == "QuantizeLinear" else _check_dq_input(node, g)
    return problems
