"""FP16 graph from the exported FP32 one, with the numerically sensitive ops kept in FP32.

The conversion is ONNX Runtime's ``convert_float_to_float16``; this module decides what stays
FP32 and checks the result. The graph's inputs and outputs keep the IOSpec dtypes (uint8 in,
float32/int64 out), so every client and the Triton config are the same for every precision, and
the metadata says ``precision: fp16`` so no report can mistake it for the FP32 graph.

After conversion the graph must pass ``onnx.checker``, still match its IOSpec, run in ONNX
Runtime (CPU inserts casts where it lacks FP16 kernels) without NaN or inf, and its differences
from the FP32 graph on random images are measured and returned. Nothing is written otherwise.

What to expect from those differences: the network's logits move by ~1e-3 relative, except
where Mask2Former's masked attention thresholds a mask logit at 0. A logit within FP16 error of
0 flips a key in or out of a query's attention, which changes that query discontinuously. That
is a property of the architecture in any reduced precision, so the budget that matters is the
mask-AP delta of the parity report, not a tensor tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from sskd_deploy.errors import InputError
from sskd_deploy.export.onnx_export import check_against_spec
from sskd_deploy.io import atomic_write_bytes
from sskd_deploy.runtime.onnx_metadata import (
    META_PRECISION,
    load_onnx,
    read_onnx_spec,
    read_precision,
    set_metadata,
)
from sskd_deploy.spec import IOSpec

META_KEEP_FP32 = "sskd_deploy.fp16_keep_fp32"
SELECT_PREFIX = "/select/"  # the deploy wrapper's own nodes, see onnx_export.name_nodes_by_module

# ORT's default list holds ops without FP16 kernels or whose outputs are indices (TopK, Range,
# CumSum, NonMaxSuppression, Min/Max, Upsample...); everything below is added for range and precision.
# Masking constants: the converter keeps -inf as -inf and clamps -3.4e38 to -65504, whose sum with
# a score may round to -inf. Both are safe because Softmax stays FP32 and no row is fully masked
# (attention_bias unmasks empty masks; the HF ViT guards its softmax with IsNaN -> 0).
DEFAULT_KEEP_FP32: tuple[str, ...] = tuple(sorted({
    *DEFAULT_OP_BLOCK_LIST,
    # Normalisations sum squares over hundreds of channels: a square overflows FP16 past |x| = 256,
    # and ViT features (DINOv2 especially) carry a few channels of very large activations.
    "LayerNormalization", "InstanceNormalization", "GroupNormalization",
    # Softmax sums exponentials over up to h*w keys; masked attention feeds it -inf biases.
    "Softmax", "LogSoftmax",
    # Accumulating reductions lose the small terms in FP16 (ReduceMax/Min are exact, so they convert).
    "ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceProd",
    # Range-amplifying maths: exp overflows past 11, pow/reciprocal/log/sqrt are the pieces of
    # hand-written normalisations. Erf, Sigmoid and Tanh have bounded outputs and convert.
    "Exp", "Log", "Pow", "Sqrt", "Reciprocal",
}))


def selection_tail(model: onnx.ModelProto) -> list[str]:
    """Names of the deploy wrapper's nodes that compute on activations.

    That is the input normalisation (uint8 -> float, cheap and exact in FP32) and the top-K
    selection with its mask scores: FP16 rounding there would reorder near-tied (query, class)
    pairs and shift every score. ``/select/`` nodes whose inputs are all initializers (weight
    slices the exporter left without a module scope) are excluded, so those weights convert.
    """
    constants = {init.name for init in model.graph.initializer} | {""}
    return [node.name for node in model.graph.node
            if node.name.startswith(SELECT_PREFIX) and any(i not in constants for i in node.input)]


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def drop_cast_round_trips(model: onnx.ModelProto) -> int:
    """Replace ``fp32 -> Cast(fp16) -> Cast(fp32)`` by an Identity; returns how many were dropped.

    The converter types every float tensor FP16 before it looks at block lists, so between two
    FP32 nodes (inside the selection tail, and from its end to the FP32 outputs) it inserts a
    pair that only rounds: the scores would leave the graph with 3 significant digits.
    """
    graph = model.graph
    # the converter's own value_info types each tensor it touched (re-inference rejects its unsorted graph)
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input)}
    producer = {out: node for node in graph.node for out in node.output}
    dropped = 0
    for node in graph.node:
        first = producer.get(node.input[0]) if _cast_to(node) == onnx.TensorProto.FLOAT else None
        if first is not None and _cast_to(first) == onnx.TensorProto.FLOAT16 \
                and types.get(first.input[0]) == onnx.TensorProto.FLOAT:
            node.op_type, node.input[0] = "Identity", first.input[0]
            del node.attribute[:]
            dropped += 1
    _drop_unused_casts(graph)
    return dropped


def _drop_unused_casts(graph: onnx.GraphProto) -> None:
    """Casts whose output nobody reads any more; the value_info of removed tensors goes with them."""
    while True:
        used = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
        dead = [n for n in graph.node if n.op_type == "Cast" and n.output[0] not in used]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    produced = {out for node in graph.node for out in node.output}
    kept = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every input is produced before it is read (``onnx.checker`` requires it)."""
    ready = {v.name for v in graph.input} | {init.name for init in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        blocked = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                blocked.append(node)
        if len(blocked) == len(pending):
            raise ValueError(f"graph has a cycle or a dangling input at node {blocked[0].name!r}")
        pending = blocked
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def to_fp16(model: onnx.ModelProto, keep_fp32_ops: tuple[str, ...] | list[str] = DEFAULT_KEEP_FP32) -> onnx.ModelProto:
    """The converted model (in memory), IO dtypes unchanged, metadata copied with ``precision: fp16``."""
    metadata = {p.key: p.value for p in model.metadata_props}
    converted = convert_float_to_float16(
        onnx.ModelProto.FromString(model.SerializeToString()),  # it edits its argument in place
        keep_io_types=True, op_block_list=list(keep_fp32_ops), node_block_list=selection_tail(model),
    )
    drop_cast_round_trips(converted)
    sort_topologically(converted.graph)  # the converter appends its casts at the end of the node list
    set_metadata(converted, {**metadata, META_PRECISION: "fp16",
                             META_KEEP_FP32: json.dumps(sorted(keep_fp32_ops))})
    return converted


def network_outputs(model: onnx.ModelProto) -> list[str]:
    """Tensors the network hands to the selection tail: class logits ``(B, Q, C+1)``, mask logits ``(B, Q, h, w)``.

    Comparing these isolates precision error; the graph outputs also move when FP16 reorders
    near-tied (query, class) pairs in the top-K, which is a decision change, measured separately.
    """
    tail = set(selection_tail(model))
    outside = {out for node in model.graph.node if node.name not in tail for out in node.output}
    return sorted({name for node in model.graph.node if node.name in tail for name in node.input if name in outside})


def _run(model: onnx.ModelProto, names: list[str], spec: IOSpec, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor in ``names`` (graph outputs or intermediates) for ``images``, computed by ONNX Runtime CPU."""
    import onnxruntime as ort

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    graph_outputs = {v.name for v in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in graph_outputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the CPU EP's "cannot constant-fold FP16 Resize" notes are expected
    session = ort.InferenceSession(probe.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, {spec.input_name: images})))


def _diff(want: np.ndarray, got: np.ndarray) -> dict[str, float]:
    error = np.abs(got.astype(np.float32) - want)
    return {"shape": list(want.shape), "max_abs_diff": float(error.max()), "mean_abs_diff": float(error.mean()),
            "max_abs": float(np.abs(want).max())}


def compare_graphs(fp32: onnx.ModelProto, fp16: onnx.ModelProto, spec: IOSpec, *, batch: int = 2,
                   seed: int = 0) -> dict[str, Any]:
    """FP16 vs FP32 on random uint8 images ``(batch, 3, H, W)``; raises if FP16 yields NaN or inf.

    ``network``: the :func:`network_outputs` per tensor name; ``outputs``: the graph outputs
    position by position, plus the sorted scores and the label agreement (decision level).
    """
    images = np.random.default_rng(seed).integers(0, 256, (batch, 3, *spec.input_size), dtype=np.uint8)
    names = [*spec.output_names, *network_outputs(fp32)]
    want, got = _run(fp32, names, spec, images), _run(fp16, names, spec, images)
    for name, array in got.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise RuntimeError(f"FP16 graph produced NaN/inf in {name!r}: a value overflowed FP16; "
                               "keep the op that overflows in FP32 (keep_fp32_ops)")
    scores, labels, masks = spec.output_names
    return {
        "batch": batch, "seed": seed,
        "network": {name: _diff(want[name], got[name]) for name in names[3:]},
        "outputs": {
            scores: _diff(want[scores], got[scores]), masks: _diff(want[masks], got[masks]),
            "sorted_scores_max_abs_diff": float(np.abs(np.sort(got[scores], 1) - np.sort(want[scores], 1)).max()),
            "label_agreement": float((got[labels] == want[labels]).mean()),
        },
    }


def convert_fp16(src: str | Path, dst: str | Path, *, keep_fp32_ops: tuple[str, ...] | list[str] = DEFAULT_KEEP_FP32,
                 check_batch: int = 2, seed: int = 0) -> dict[str, Any]:
    """Convert the FP32 graph at ``src`` (from ``export_onnx``) to FP16 at ``dst``, written atomically.

    Returns the op types present in the graph that were kept FP32 and how many nodes that is,
    initializer counts per dtype, file sizes, and :func:`compare_graphs` under ``vs_fp32``.
    """
    model = load_onnx(src)
    spec = read_onnx_spec(src)  # by path, so an error names the file (the graph is parsed without weights)
    if read_precision(model) != "fp32":
        raise InputError(src, f"precision is {read_precision(model)!r}; FP16 conversion starts from the FP32 graph")
    converted = to_fp16(model, keep_fp32_ops)
    onnx.checker.check_model(converted, full_check=True)
    check_against_spec(converted, spec, source=str(dst))
    fp16_bytes = converted.SerializeToString()
    report = compare_graphs(model, converted, spec, batch=check_batch, seed=seed)
    atomic_write_bytes(dst, fp16_bytes)
    initializers = [init.data_type for init in converted.graph.initializer]
    tail = set(selection_tail(model))
    kept = [n.op_type for n in model.graph.node if n.op_type in keep_fp32_ops or n.name in tail]
    return {
        "kept_fp32_op_types": sorted({n.op_type for n in model.graph.node} & set(keep_fp32_ops)),
        "kept_fp32_nodes": len(kept),
        "selection_tail_nodes": len(tail),
        "fp16_initializers": initializers.count(onnx.TensorProto.FLOAT16),
        "fp32_initializers": initializers.count(onnx.TensorProto.FLOAT),
        "bytes": {"fp32": model.ByteSize(), "fp16": len(fp16_bytes)},
        "vs_fp32": report,
    }
