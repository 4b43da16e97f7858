"""The TensorRT Q/DQ rule checker on hand-made graphs: a correct one passes, each violation is named.

The real quantized student graph is checked in ``test_int8.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sskd_deploy.export.qdq_rules import check_qdq_for_tensorrt


def conv_graph(*, act_zp=0, act_scale=0.02, w_axis=0, w_scale=None, opset=17, q_feeds_dq=True, bias=None,
               act_per_channel=False, zp_type=np.int8, matmul=False) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(DQ(int8 weight)) -> y, or the same with MatMul; knobs break one rule each."""
    rng = np.random.default_rng(0)
    w_shape = (6, 4) if matmul else (8, 4, 3, 3)
    w_q = rng.integers(-127, 128, w_shape, dtype=np.int8)
    n_ch = w_shape[w_axis]
    inits = [
        numpy_helper.from_array(np.full((4,) if act_per_channel else (), act_scale, np.float32), "x_scale"),
        numpy_helper.from_array(np.full((4,) if act_per_channel else (), act_zp, zp_type), "x_zp"),
        numpy_helper.from_array(w_q, "w_q"),
        numpy_helper.from_array(np.asarray(w_scale if w_scale is not None else np.full(n_ch, 0.01), np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(n_ch, np.int8), "w_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="q_x", axis=1),
        helper.make_node("DequantizeLinear", ["x_q" if q_feeds_dq else "x_q_relu", "x_scale", "x_zp"], ["x_dq"],
                         name="dq_x", axis=1),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=w_axis),
    ]
    if not q_feeds_dq:
        nodes.insert(1, helper.make_node("Relu", ["x_q"], ["x_q_relu"], name="relu_on_int8"))
    conv_inputs = ["x_dq", "w"]
    if bias is not None:
        inits += [numpy_helper.from_array(bias, "b_q"), numpy_helper.from_array(np.float32(1e-4), "b_scale")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["b"], name="dq_b"))
        conv_inputs.append("b")
    nodes.append(helper.make_node("MatMul" if matmul else "Conv", conv_inputs, ["y"], name="op"))
    x_shape, y_shape = ([2, 4, 6], [2, 4, 4]) if matmul else ([1, 4, 8, 8], [1, 8, 6, 6])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_correct_graph_passes_and_runs() -> None:
    ort = pytest.importorskip("onnxruntime")
    model = conv_graph()
    onnx.checker.check_model(model)
    assert check_qdq_for_tensorrt(model) == []
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.ones((1, 4, 8, 8), np.float32)})[0].shape == (1, 8, 6, 6)
    assert check_qdq_for_tensorrt(conv_graph(matmul=True, w_axis=1)) == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"act_zp": 3}, "zero point must be 0"),
    ({"act_scale": -0.5}, "scale must be positive"),
    ({"act_scale": float("inf")}, "scale must be positive"),
    ({"w_scale": np.r_[np.full(7, 0.01), 0.0]}, "scale must be positive"),
    ({"q_feeds_dq": False}, "must feed a DequantizeLinear"),
    ({"w_axis": 1}, "needs its output-channel axis 0"),
    ({"matmul": True, "w_axis": 0}, "needs its output-channel axis 1"),
    ({"act_per_channel": True}, "per-channel scale on an activation"),
    ({"opset": 12}, "opset 12 < 13"),
    ({"zp_type": np.uint8, "act_zp": 0}, "needs int8"),
    ({"bias": np.arange(8, dtype=np.int32)}, "dequantizes int8 only"),
])
def test_each_violation_is_reported(kwargs, message) -> None:
    problems = check_qdq_for_tensorrt(conv_graph(**kwargs))
    assert any(message in p for p in problems), problems


def test_quantized_graph_output_and_missing_zero_point() -> None:
    model = conv_graph()
    model.graph.output.append(helper.make_tensor_value_info("x_q", TensorProto.INT8, [1, 4, 8, 8]))
    assert any("leaves the graph quantized" in p for p in check_qdq_for_tensorrt(model))
    model = conv_graph()
    del model.graph.node[0].input[2]  # no zero point: ONNX quantizes to uint8
    assert any("uint8" in p for p in check_qdq_for_tensorrt(model))


def test_scale_must_be_constant() -> None:
    model = conv_graph()
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == "x_scale"))
    model.graph.input.append(helper.make_tensor_value_info("x_scale", TensorProto.FLOAT, []))
    assert any("not a constant initializer" in p for p in check_qdq_for_tensorrt(model))
