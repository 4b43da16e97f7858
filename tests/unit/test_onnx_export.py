"""The student-tiny deploy wrapper exports to ONNX (static shapes, dynamic batch) and ONNX Runtime
reproduces PyTorch. The export module of a later issue builds on exactly this path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sskd_deploy.config.model import PRESETS
from sskd_deploy.models.deploy import DeployWrapper
from sskd_deploy.spec import IOSpec

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_deploy_wrapper_onnx_matches_torch(tmp_path) -> None:
    from sskd_deploy.models.maskformer import build_model

    torch.manual_seed(0)
    config = PRESETS["student-tiny"].with_classes(4).updated(input_size=(64, 96))
    spec = IOSpec.from_model_config(config, ["a", "b", "c", "d"])
    wrapper = DeployWrapper(model=build_model(config).eval(), spec=spec).eval()
    example = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    path = tmp_path / "student.onnx"
    names = list(spec.output_names)
    torch.onnx.export(
        wrapper, (example,), str(path), input_names=[spec.input_name], output_names=names, opset_version=17,
        dynamic_axes={spec.input_name: {0: "batch"}, **{n: {0: "batch"} for n in names}}, dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [spec.input_name]
    assert [o.name for o in session.get_outputs()] == names
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        expected = [t.numpy() for t in wrapper(images)]
    got = session.run(names, {spec.input_name: images.numpy()})
    for name, want, have, tspec in zip(names, expected, got, spec.outputs):
        assert have.shape == tspec.shape_for_batch(2) and have.dtype == np.dtype(tspec.dtype), name
    np.testing.assert_array_equal(got[1], expected[1])  # labels: the same (query, class) picks
    np.testing.assert_allclose(got[0], expected[0], atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(got[2], expected[2], atol=1e-3, rtol=1e-3)
