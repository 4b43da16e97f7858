"""A real ``tritonserver`` whose Python-backend model runs the graph with OpenVINO (``serve.python_runtime``):
same tensors as the local OpenVINO runner, bad requests answered with errors, the server still serving.

Needs openvino in the server's backend environment (serving-env.txt has it; ``make triton-env``).
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

pytest.importorskip("openvino")
torch = pytest.importorskip("torch")
pytest.importorskip("tritonclient.grpc")

from tests.integration.test_serve import _require_server

pytestmark = pytest.mark.slow

INPUT_SIZE = (64, 96)


def _require_openvino_in(install) -> None:
    env = install.env.get("VIRTUAL_ENV")
    if env is None:  # an install tree (NGC container): its Python backend has its own environment
        pytest.skip("not the bundled server; its backend environment is not ours to check")
    probe = subprocess.run([os.path.join(env, "bin", "python"), "-c", "import openvino"], check=False,
                           capture_output=True, text=True)
    if probe.returncode != 0:
        message = f"openvino does not import in {env} (make triton-env installs serving-env.txt)"
        if os.environ.get("SSKD_REQUIRE_TRITON"):
            raise AssertionError(message + "\n" + probe.stderr[-2000:])
        pytest.skip(message)


def test_python_backend_on_openvino_matches_the_local_runner(tmp_path):
    _require_server()
    from sskd_deploy.config.model import model_preset
    from sskd_deploy.config.serve import ServeConfig
    from sskd_deploy.export.onnx_export import export_onnx
    from sskd_deploy.models.deploy import DeployWrapper
    from sskd_deploy.models.maskformer import build_model
    from sskd_deploy.provenance import hash_file
    from sskd_deploy.runtime.openvino_runner import OpenVINORunner
    from sskd_deploy.runtime.triton_runner import TritonError, TritonRunner
    from sskd_deploy.serving.repository import ServedGraph, generate_repository
    from sskd_deploy.serving.server import TritonServer, free_port, locate_triton
    from sskd_deploy.spec import IOSpec

    install = locate_triton()
    _require_openvino_in(install)
    torch.manual_seed(0)
    cfg = model_preset("student-tiny").with_classes(3).updated(input_size=INPUT_SIZE)
    spec = IOSpec.from_model_config(cfg, ["a", "b", "c"])
    graph_path = tmp_path / "model_fp32.onnx"
    export_onnx(DeployWrapper(model=build_model(cfg).eval(), spec=spec).eval(), graph_path, checkpoint_sha256="0" * 64)

    settings = ServeConfig(repository=tmp_path / "repo", max_batch=4, threads=1, python_runtime="openvino")
    graph = ServedGraph(spec=spec, onnx=graph_path, onnx_sha256=hash_file(graph_path), precision="fp32",
                        export_max_batch=8, artifact=str(tmp_path))
    model = generate_repository(graph, settings)["models"]["python"]["name"]
    ports = {k: free_port() for k in ("grpc_port", "http_port", "metrics_port")}
    with TritonServer(install, settings.repository, [model], log_path=tmp_path / "tritonserver.log", **ports) as server:
        runner = TritonRunner(server.grpc_url, model)
        local = OpenVINORunner(graph_path, threads=1)
        images = np.random.default_rng(0).integers(0, 256, (3, 3, *INPUT_SIZE), dtype=np.uint8)
        # the server compiles one dynamic-batch model, the runner one static model per batch: ~1e-5 apart
        for got, want in zip(runner.run(images), local.run(images)):
            assert got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert runner.config["parameters"]["runtime"]["string_value"] == "openvino"
        for bad in (images.astype(np.float32), images[:, :, :32], np.concatenate([images, images])):
            with pytest.raises(TritonError):
                runner.infer_raw(bad)
            np.testing.assert_allclose(runner.run(images[:1])[0], local.run(images[:1])[0], rtol=1e-4, atol=1e-4)
        runner.close()
        local.close()
