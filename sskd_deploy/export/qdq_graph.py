"""Small graph edits around ONNX Runtime's quantizer: readable names, float where asked, no leftovers.

- :func:`restore_module_prefixes`: nodes that ONNX Runtime creates (Q/DQ pairs, a Gather replacing
  a Split) get the ``/module/path/`` of the op they belong to, so block grouping, the rule checker's
  messages and profiles stay readable.
- :func:`keep_float_inputs`: ONNX Runtime quantizes a tensor once and points *every* consumer at
  the dequantized copy, so a node excluded from quantization (a block the mixed-precision search
  keeps float, the deploy wrapper's selection tail) would still read int8-rounded inputs whenever
  a quantized neighbour shares the tensor. Excluded nodes are rewired to the original float tensor.
- :func:`drop_dangling`: Q/DQ pairs, initializers and opset imports nothing uses any more.
- :func:`graph_census`: quantized vs float compute ops and Q/DQ counts, for manifests and logs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection
from typing import Any

import onnx

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            found[name].append(node)
    return found


def _prefix(node: onnx.NodeProto | None) -> str | None:
    return node.name.rsplit("/", 1)[0] if node is not None and node.name.startswith("/") else None


def _served_op(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]]) -> onnx.NodeProto | None:
    """The first non-Q/DQ op downstream of a Q or DQ node (Q -> DQ -> Conv gives the Conv)."""
    for _ in range(3):
        following = [c for out in node.output for c in consumers.get(out, [])]
        if not following:
            return None
        node = following[0]
        if node.op_type not in QDQ_OPS:
            return node
    return None


def restore_module_prefixes(model: onnx.ModelProto) -> int:
    """Prefix unnamed nodes with a neighbour's module path; returns how many were renamed.

    A Q/DQ node takes the path of the op it quantizes for (else of its producer); any other node
    that of the producer of one of its inputs (else of a consumer).
    """
    producer = {out: n for n in model.graph.node for out in n.output}
    consumers = _consumers(model)
    renamed = 0
    for node in model.graph.node:
        if node.name.startswith("/"):
            continue
        upstream = [producer.get(i) for i in node.input]
        downstream = [c for o in node.output for c in consumers.get(o, [])]
        if node.op_type in QDQ_OPS:
            near = [_served_op(node, consumers), *upstream]
        else:
            near = [*upstream, *downstream]
        prefix = next((p for p in map(_prefix, near) if p), None)
        if prefix:
            node.name = f"{prefix}/{node.name or node.op_type}"
            renamed += 1
    return renamed


def keep_float_inputs(model: onnx.ModelProto, float_nodes: Collection[str]) -> int:
    """Point the named nodes at the float tensor wherever they read a Q -> DQ copy; returns the count."""
    producer = {out: n for n in model.graph.node for out in n.output}
    rewired = 0
    for node in model.graph.node:
        if node.name not in float_nodes:
            continue
        for index, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[index] = q.input[0]
                rewired += 1
    return rewired


def drop_dangling(model: onnx.ModelProto) -> int:
    """Remove Q/DQ nodes whose outputs nobody reads, then unused initializers and opset imports."""
    graph_outputs = {o.name for o in model.graph.output}
    removed = 0
    while True:
        consumers = _consumers(model)
        dead = [n for n in model.graph.node if n.op_type in QDQ_OPS
                and not any(o in graph_outputs or consumers.get(o) for o in n.output)]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
        removed += len(dead)
    used = {name for n in model.graph.node for name in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used and i.name not in graph_outputs]:
        model.graph.initializer.remove(init)
    domains = {n.domain or "" for n in model.graph.node} | {""}
    kept = [o for o in model.opset_import if (o.domain or "") in domains or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return removed


def count_quantized(model: onnx.ModelProto, op_types: Collection[str]) -> dict[str, int]:
    """How many ``op_types`` nodes read a dequantized input, out of how many there are."""
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    ops = [n for n in model.graph.node if n.op_type in op_types]
    return {"quantized": sum(any(i in dq_outputs for i in n.input) for n in ops), "total": len(ops)}


CENSUS_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
ATTENTION_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "QAttention")


def graph_census(model: onnx.ModelProto) -> dict[str, Any]:
    """The Q/DQ graph at a glance: per compute op type how many read a dequantized input
    (``quantized``) and how many stay float, the Q and DQ node counts and fused attention nodes."""
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    ops: dict[str, dict[str, int]] = {}
    for node in model.graph.node:
        if node.op_type in CENSUS_OPS:
            entry = ops.setdefault(node.op_type, {"quantized": 0, "float": 0})
            entry["quantized" if any(i in dq_outputs for i in node.input) else "float"] += 1
    counts = Counter(n.op_type for n in model.graph.node)
    return {"ops": ops, "quantize_linear": counts["QuantizeLinear"], "dequantize_linear": counts["DequantizeLinear"],
            "fused_attention": sum(counts[op] for op in ATTENTION_OPS)}
