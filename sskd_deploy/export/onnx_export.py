"""ONNX export of the deploy wrapper: IOSpec names and shapes, a dynamic batch, contract in the metadata.

The graph is what :class:`~sskd_deploy.models.deploy.DeployWrapper` computes: uint8 NCHW RGB in,
normalisation, the network and the fixed-K selection out, so every compiled form (INT8, FP16,
TensorRT engines) starts from exactly the function the validation AP was measured on.

The exporter is ``torch.onnx.export(dynamo=True)``: it captures the model with ``torch.export``
and keeps the batch dimension symbolic. The legacy tracer bakes ``batch x heads`` into the
attention-mask reshapes of ``nn.MultiheadAttention``, so its graphs only run at the traced batch.

Every file carries, in ``metadata_props``: the IOSpec JSON, its digest, the sha256 of the
checkpoint it came from and its precision; :func:`read_onnx_spec` reads them back, so a runner
or a Triton config generator never needs the checkpoint.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from sskd_deploy.errors import InputError
from sskd_deploy.io import atomic_write_bytes
from sskd_deploy.models.deploy import DeployWrapper
from sskd_deploy.runtime.onnx_metadata import contract_metadata, set_metadata
from sskd_deploy.spec import IOSpec

DEFAULT_OPSET = 18
MIN_OPSET = 17
NUMPY_TO_ONNX = {"uint8": onnx.TensorProto.UINT8, "float32": onnx.TensorProto.FLOAT,
                 "float16": onnx.TensorProto.FLOAT16, "int64": onnx.TensorProto.INT64}


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim]


def check_against_spec(model: onnx.ModelProto, spec: IOSpec, *, source: str = "ONNX model") -> None:
    """The graph's inputs and outputs have the IOSpec's names, dtypes, static sizes and a symbolic batch."""
    problems = []
    graph_io = [(model.graph.input, (spec.input,)), (model.graph.output, spec.outputs)]
    for values, wanted in graph_io:
        names = [v.name for v in values]
        if names != [t.name for t in wanted]:
            problems.append(f"tensors {names} != IOSpec {[t.name for t in wanted]}")
            continue
        for value, tensor in zip(values, wanted):
            elem = value.type.tensor_type.elem_type
            if elem != NUMPY_TO_ONNX[tensor.dtype]:
                problems.append(f"{tensor.name}: dtype {onnx.TensorProto.DataType.Name(elem)} != {tensor.dtype}")
            dims = _dims(value)
            if len(dims) != len(tensor.shape) or list(dims[1:]) != list(tensor.shape[1:]):
                problems.append(f"{tensor.name}: shape {dims} != IOSpec {list(tensor.shape)}")
            elif not isinstance(dims[0], str):
                problems.append(f"{tensor.name}: batch dimension is fixed at {dims[0]}, expected a symbolic one")
    if problems:
        raise InputError(source, "graph does not match its IOSpec: " + "; ".join(problems))


@contextlib.contextmanager
def _quiet_loggers():
    """The exporter logs every skipped optional op (torchvision's, absent here) at WARNING."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _scope_of(node: onnx.NodeProto) -> str:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(prop.value)
            modules = [s for s in scopes if s.startswith("model")]  # the rest are op names
            return modules[-1] if modules else ""
    return ""


def name_nodes_by_module(model: onnx.ModelProto) -> None:
    """Prefix every node name with the module that created it: ``/model/encoder/.../layer.1/node_MatMul_200``.

    The exporter names nodes by op only and keeps the module path in node metadata, which graph
    rewrites (ONNX Runtime's optimiser before quantisation) drop. In the name it survives, so the
    mixed-precision search and any human reading a profile can tell which block a node belongs to.
    Nodes of the deploy wrapper's own selection tail get ``/select/``.
    """
    for node in model.graph.node:
        scope = _scope_of(node)
        prefix = "/" + scope.replace(".", "/") if scope else "/select"
        if not node.name.startswith(prefix + "/"):
            node.name = f"{prefix}/{node.name}"


@contextlib.contextmanager
def _eager_attention(module: torch.nn.Module):
    """Export Hugging Face attention as plain matmul + softmax.

    SDPA exports as a "safe" softmax (Softmax, then IsNaN + Where over the whole attention
    matrix to zero fully masked rows). The ViT never masks, so those two ops are pure cost: at
    512x1024 they took a third of ONNX Runtime's time. Eager attention computes the same values.
    """
    switched = []
    for sub in module.modules():
        if hasattr(sub, "set_attn_implementation") and getattr(sub.config, "_attn_implementation", None) != "eager":
            switched.append((sub, sub.config._attn_implementation))
            sub.set_attn_implementation("eager")
    try:
        yield
    finally:
        for sub, previous in switched:
            sub.set_attn_implementation(previous)


def _export_graph(wrapper: DeployWrapper, opset: int, max_batch: int) -> onnx.ModelProto:
    spec = wrapper.spec
    example = torch.zeros((2, 3, *spec.input_size), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    quiet = io.StringIO()
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(quiet), _quiet_loggers(), \
            _eager_attention(wrapper):
        warnings.simplefilter("ignore")  # exporter chatter about constant folding and deprecations
        program = torch.onnx.export(
            wrapper.eval(), (example,), None, input_names=[spec.input_name], output_names=list(spec.output_names),
            dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True, external_data=False, verbose=False,
        )
    model = program.model_proto
    name_nodes_by_module(model)
    # torch.export names the batch "s0"/"batch" depending on the version; one stable name reads better
    for value in (*model.graph.input, *model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    return model


def export_onnx(
    wrapper: DeployWrapper,
    path: str | Path,
    *,
    checkpoint_sha256: str,
    opset: int = DEFAULT_OPSET,
    max_batch: int = 64,
    smoke_batch: int = 2,
    smoke_atol: float = 1e-3,
) -> dict[str, Any]:
    """Export ``wrapper`` to ``path`` (written atomically) and check it.

    Checks: ``onnx.checker`` (full), shape inference, the graph's IO against the IOSpec, and a
    smoke run of ONNX Runtime against PyTorch on ``smoke_batch`` random images (a batch other
    than the export example's, so a baked-in batch would fail). Returns the smoke-test figures.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is below the supported minimum {MIN_OPSET}")
    spec = wrapper.spec
    model = _export_graph(wrapper, opset, max_batch)
    set_metadata(model, contract_metadata(spec, checkpoint_sha256=checkpoint_sha256, precision="fp32"))
    model.doc_string = f"sskd-deploy {spec.model_name}: {spec.num_classes} classes, top-{spec.top_k}"
    onnx.checker.check_model(model, full_check=True)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    check_against_spec(model, spec, source=str(path))
    atomic_write_bytes(path, model.SerializeToString())
    return smoke_compare(wrapper, path, batch=smoke_batch, atol=smoke_atol)


def smoke_compare(wrapper: DeployWrapper, path: str | Path, *, batch: int = 3, atol: float = 1e-3,
                  seed: int = 0) -> dict[str, Any]:
    """Run random uint8 images through PyTorch and ONNX Runtime (CPU); fail loudly on a mismatch."""
    import onnxruntime as ort

    spec = wrapper.spec
    images = np.random.default_rng(seed).integers(0, 256, (batch, 3, *spec.input_size), dtype=np.uint8)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(spec.output_names), {spec.input_name: images})
    with torch.inference_mode():
        want = [t.numpy() for t in wrapper.eval()(torch.from_numpy(images))]
    scores_diff = float(np.abs(got[0] - want[0]).max())
    labels_equal = float((got[1] == want[1]).mean())
    masks_diff = float(np.abs(got[2] - want[2]).max())
    report = {"batch": batch, "max_abs_score_diff": scores_diff, "label_agreement": labels_equal,
              "max_abs_mask_logit_diff": masks_diff}
    if scores_diff > atol:
        raise RuntimeError(f"{path}: ONNX Runtime differs from PyTorch (max |score diff| {scores_diff:.2e} > {atol})"
                           f"; report: {json.dumps(report)}")
    return report


def export_checkpoint(checkpoint: str | Path, path: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Load a checkpoint, wrap it and :func:`export_onnx` it."""
    from sskd_deploy.models.checkpoint import load_model
    from sskd_deploy.provenance import hash_file

    model, ckpt = load_model(checkpoint)
    wrapper = DeployWrapper(model=model, spec=ckpt.spec).eval()
    return export_onnx(wrapper, path, checkpoint_sha256=hash_file(checkpoint), **kwargs)


