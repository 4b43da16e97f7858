"""FP16 conversion: FP16 weights, IOSpec dtypes at the boundary, sensitive ops still FP32, no NaN,
and differences from the FP32 graph within what FP16 rounding explains.

Tolerances were measured on this tiny random student (64x96, 3 classes, batch 4, seeds 0-2): the
class logits' mean |diff| was 1.4e-4..8.7e-4 (max 0.002..0.04, on logits up to ~1.2), the mask
logits' mean |diff| 0.004..0.026 (max up to 1.8, on logits up to ~15, where masked attention
flipped a key), sorted scores 1e-3..2.3e-3, label agreement 0.9..1.0. The bounds below leave
about 3x margin over those.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch

from sskd_deploy.config.model import model_preset
from sskd_deploy.errors import InputError
from sskd_deploy.export.fp16 import DEFAULT_KEEP_FP32, convert_fp16, selection_tail, to_fp16
from sskd_deploy.export.onnx_export import check_against_spec, export_onnx
from sskd_deploy.models.deploy import DeployWrapper
from sskd_deploy.models.maskformer import build_model
from sskd_deploy.runtime.onnx_metadata import META_PRECISION, get_metadata, read_onnx_spec
from sskd_deploy.runtime.onnxruntime_runner import OrtRunner
from sskd_deploy.spec import IOSpec

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
SENSITIVE = ("Softmax", "LayerNormalization", "InstanceNormalization", "ReduceSum", "TopK")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.manual_seed(0)
    config = model_preset("student-tiny").with_classes(3).updated(input_size=(64, 96))
    spec = IOSpec.from_model_config(config, ["a", "b", "c"])
    wrapper = DeployWrapper(model=build_model(config).eval(), spec=spec).eval()
    folder = tmp_path_factory.mktemp("fp16")
    export_onnx(wrapper, folder / "fp32.onnx", checkpoint_sha256="0" * 64)
    report = convert_fp16(folder / "fp32.onnx", folder / "fp16.onnx", check_batch=4, seed=1)
    return {"spec": spec, "fp32": folder / "fp32.onnx", "fp16": folder / "fp16.onnx", "report": report}


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    graph = inferred.graph
    values = (*graph.value_info, *graph.input, *graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in values} | {i.name: i.data_type for i in graph.initializer}


def test_weights_are_fp16_and_io_keeps_the_iospec_dtypes(graphs: dict) -> None:
    model = onnx.load(str(graphs["fp16"]))
    onnx.checker.check_model(model, full_check=True)
    check_against_spec(model, graphs["spec"])  # uint8 in; float32, int64, float32 out; symbolic batch
    weights = {init.name: init.data_type for init in model.graph.initializer}
    matmul_weights = [name for node in model.graph.node if node.op_type in ("Conv", "MatMul", "Gemm")
                      for name in node.input[1:2] if name in weights]
    assert matmul_weights and all(weights[name] == FLOAT16 for name in matmul_weights)
    assert graphs["report"]["fp16_initializers"] > 10 * graphs["report"]["fp32_initializers"]
    assert graphs["fp16"].stat().st_size < 0.7 * graphs["fp32"].stat().st_size


def test_metadata_says_fp16_and_keeps_the_contract(graphs: dict) -> None:
    meta32 = get_metadata(onnx.load(str(graphs["fp32"]), load_external_data=False))
    meta16 = get_metadata(onnx.load(str(graphs["fp16"]), load_external_data=False))
    assert meta16[META_PRECISION] == "fp16"
    assert {k: v for k, v in meta16.items() if k in meta32 and k != META_PRECISION} == {
        k: v for k, v in meta32.items() if k != META_PRECISION}
    assert read_onnx_spec(graphs["fp16"]) == graphs["spec"]
    runner = OrtRunner(graphs["fp16"])
    assert (runner.info.name, runner.info.precision) == ("onnxruntime-fp16", "fp16")


def test_sensitive_ops_and_the_selection_tail_stay_fp32(graphs: dict) -> None:
    fp32, fp16 = onnx.load(str(graphs["fp32"])), onnx.load(str(graphs["fp16"]))
    types = _types(fp16)
    tail = set(selection_tail(fp32))
    checked = [n for n in fp16.graph.node if n.op_type in SENSITIVE or n.name in tail]
    assert {n.op_type for n in checked} >= set(SENSITIVE)
    for node in checked:
        floats = [types[name] for name in (*node.input, *node.output) if types.get(name) in (FLOAT, FLOAT16)]
        assert all(t == FLOAT for t in floats), f"{node.name} ({node.op_type}) runs in FP16"
    # no FP32 -> FP16 -> FP32 round trip is left on the way to the outputs: scores keep FP32 precision
    producer = {out: node for node in fp16.graph.node for out in node.output}
    for output in fp16.graph.output:
        node = producer[output.name]
        assert node.op_type != "Cast" or types[node.input[0]] == FLOAT, output.name


def test_runs_without_nan_and_stays_close_to_fp32(graphs: dict) -> None:
    images = np.random.default_rng(7).integers(0, 256, (3, 3, 64, 96), dtype=np.uint8)
    want, got = OrtRunner(graphs["fp32"]).run(images), OrtRunner(graphs["fp16"]).run(images)
    assert all(np.isfinite(array).all() for array in (got[0], got[2]))
    assert np.abs(np.sort(got[0], 1) - np.sort(want[0], 1)).max() < 1e-2
    assert (got[1] == want[1]).mean() >= 0.7
    report = graphs["report"]["vs_fp32"]
    class_logits, mask_logits = sorted(report["network"].values(), key=lambda d: len(d["shape"]))
    assert class_logits["shape"] == [4, 20, 4] and mask_logits["shape"] == [4, 20, 16, 24]
    assert class_logits["mean_abs_diff"] < 3e-3 and class_logits["max_abs_diff"] < 0.12
    assert mask_logits["mean_abs_diff"] < 0.08
    assert report["outputs"]["sorted_scores_max_abs_diff"] < 1e-2


def test_round_trip_casts_between_fp32_ops_are_removed() -> None:
    """Softmax -> ReduceSum, both kept FP32: the result must be bit-identical to the FP32 graph."""
    import onnxruntime as ort

    x = onnx.helper.make_tensor_value_info("x", FLOAT, [2, 3000])
    y = onnx.helper.make_tensor_value_info("y", FLOAT, [2, 1])
    nodes = [onnx.helper.make_node("Softmax", ["x"], ["p"], name="softmax"),
             onnx.helper.make_node("ReduceSum", ["p", "axes"], ["y"], name="sum", keepdims=1)]
    axes = onnx.numpy_helper.from_array(np.array([-1], np.int64), "axes")
    graph = onnx.helper.make_graph(nodes, "g", [x], [y], initializer=[axes])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    converted = to_fp16(model, DEFAULT_KEEP_FP32)
    onnx.checker.check_model(converted, full_check=True)
    assert not [n for n in converted.graph.node if n.op_type == "Cast"]
    data = {"x": np.random.default_rng(0).normal(size=(2, 3000)).astype(np.float32)}
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, data)[0]
           for m in (model, converted)]
    np.testing.assert_array_equal(run[0], run[1])


def test_bad_sources_raise_input_error(graphs: dict, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.onnx: ONNX file not found"):
        convert_fp16(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    with pytest.raises(InputError, match="precision is 'fp16'"):
        convert_fp16(graphs["fp16"], tmp_path / "again.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written
