"""Serving pieces without a server: generated configs, the repository, install discovery, the Python-backend
model (driven through a stand-in for Triton's utilities with a real ONNX graph), the client's checks,
the load harness and the predict writer."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")

from sskd_deploy.config.serve import ServeConfig
from sskd_deploy.errors import InputError
from sskd_deploy.serving.repository import (
    FORMS,
    ServedGraph,
    build_config,
    generate_repository,
    model_names,
    parse_config,
)
from sskd_deploy.serving.server import ServeError, TritonInstall, choose_form, locate_triton
from sskd_deploy.spec import IOSpec

SPEC = IOSpec(model_name="student-tiny", class_names=("a", "b", "c"), input_size=(8, 12), top_k=4)


def _graph(path: Path, spec: IOSpec = SPEC, *, fail_on_batch: int | None = None) -> Path:
    """A small ONNX graph with the IOSpec's IO: scores = per-image mean / 255 repeated K times,
    labels = arange(K), mask logits = the mean as well. Enough to check batching and splitting."""
    import onnx
    from onnx import TensorProto, helper

    h, w = spec.input_size
    k, (mh, mw) = spec.top_k, spec.mask_size
    nodes = [
        helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f", "axes123"], ["m"], keepdims=0),  # (B,)
        helper.make_node("Div", ["m", "c255"], ["mn"]),
        helper.make_node("Unsqueeze", ["mn", "ax1"], ["mu"]),  # (B, 1)
        helper.make_node("Expand", ["mu", "shape_bk"], ["scores_pre"]),
        helper.make_node("Identity", ["scores_pre"], ["scores"]),
        helper.make_node("Shape", ["mn"], ["b"]),
        helper.make_node("Concat", ["b", "k1"], ["bk"], axis=0),
        helper.make_node("Expand", ["karange", "bk"], ["labels"]),
        helper.make_node("Unsqueeze", ["scores_pre", "ax23"], ["s4"]),
        helper.make_node("Concat", ["b", "k1", "mhw"], ["shape4"], axis=0),
        helper.make_node("Expand", ["s4", "shape4"], ["mask_logits"]),
    ]
    inits = [
        helper.make_tensor("axes123", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("c255", TensorProto.FLOAT, [], [255.0]),
        helper.make_tensor("ax1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("ax23", TensorProto.INT64, [2], [2, 3]),
        helper.make_tensor("shape_bk", TensorProto.INT64, [2], [1, k]),
        helper.make_tensor("k1", TensorProto.INT64, [1], [k]),
        helper.make_tensor("mhw", TensorProto.INT64, [2], [mh, mw]),
        helper.make_tensor("karange", TensorProto.INT64, [k], list(range(k))),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["B", 3, h, w])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", k]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["B", k]),
         helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, ["B", k, mh, mw])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _served(tmp_path: Path, **kw) -> ServedGraph:
    path = _graph(tmp_path / "model_fp32.onnx")
    return ServedGraph(spec=SPEC, onnx=path, onnx_sha256="ab" * 32, precision="fp32", export_max_batch=8,
                       artifact=str(tmp_path), **kw)


# --- configs -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", FORMS)
def test_config_matches_iospec_and_parses_back(form):
    from sskd_deploy.serving.repository import config_text

    settings = ServeConfig(max_batch=4, instances=2, threads=3)
    text = config_text(build_config(SPEC, form, f"m_{form}", settings, precision="fp32", graph_sha256="x"))
    config = parse_config(text)
    assert config.name == f"m_{form}" and config.max_batch_size == 4
    assert [(i.name, list(i.dims)) for i in config.input] == [("images", [3, 8, 12])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("scores", [4]), ("labels", [4]),
                                                                ("mask_logits", [4, 2, 3])]
    assert config.instance_group[0].count == 2
    assert config.HasField("dynamic_batching")
    assert [w.batch_size for w in config.model_warmup] == [1, 4]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert IOSpec.from_json(params["iospec"]) == SPEC and params["iospec_sha256"] == SPEC.digest()
    expected = {"onnxruntime": ("onnxruntime_onnx", "onnxruntime"), "tensorrt": ("tensorrt_plan", "tensorrt"),
                "python": ("", "python"), "openvino": ("", "openvino")}[form]
    assert (config.platform, config.backend) == expected
    assert ("intra_op_thread_count" in params) == (form in ("onnxruntime", "python"))
    assert (params.get("INFERENCE_NUM_THREADS") == "3") == (form == "openvino")


def test_openvino_config_uses_the_backends_own_keys():
    from tritonclient.grpc import model_config_pb2 as mc

    config = build_config(SPEC, "openvino", "m", ServeConfig(max_batch=4), precision="fp32", graph_sha256="x")
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert config.default_model_filename == "model.onnx"
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    # the backend fixes the batch at max_batch_size and rejects smaller ones (the batch-1 warm-up too) without padding
    assert params["ENABLE_BATCH_PADDING"] == "YES" and params["PERFORMANCE_HINT"] == "LATENCY"
    assert params["NUM_STREAMS"] == "1" and "HINT_BF16" not in params and "INFERENCE_NUM_THREADS" not in params
    ir = build_config(SPEC, "openvino", "m", ServeConfig(openvino_precision="bf16"), precision="int8",
                      graph_sha256="y", openvino_ir=True)
    ir_params = {k: v.string_value for k, v in ir.parameters.items()}
    assert ir.default_model_filename == "model.xml" and ir_params["HINT_BF16"] == "YES"
    assert ir_params["graph_sha256"] == "y" and ir_params["precision"] == "int8"


def test_python_config_names_its_runtime():
    default = {k: v.string_value for k, v in build_config(SPEC, "python", "m", ServeConfig(), precision="fp32",
                                                           graph_sha256="x").parameters.items()}
    assert default["runtime"] == "onnxruntime" and default["model_file"] == "model.onnx"
    assert "precision_hint" not in default
    settings = ServeConfig(python_runtime="openvino", openvino_precision="bf16")
    ov = {k: v.string_value for k, v in build_config(SPEC, "python", "m", settings, precision="int8",
                                                      graph_sha256="x", openvino_ir=True).parameters.items()}
    assert (ov["runtime"], ov["precision_hint"], ov["model_file"]) == ("openvino", "bf16", "model.xml")


def test_tensorrt_accelerator_on_the_onnx_model():
    from tritonclient.grpc import model_config_pb2 as mc

    config = build_config(SPEC, "onnxruntime", "m", ServeConfig(tensorrt_accelerator=True), precision="int8",
                          graph_sha256="x")
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "INT8"
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU


def test_model_names_are_valid():
    assert model_names(SPEC, ServeConfig())["python"] == "student_tiny_python"
    with pytest.raises(InputError, match="serve.model_name"):
        model_names(SPEC, ServeConfig(model_name="bad name"))


# --- repository ----------------------------------------------------------------------------------------------

def test_repository_layout_reuse_and_regeneration(tmp_path):
    graph = _served(tmp_path)
    out = tmp_path / "repo"
    manifest = generate_repository(graph, ServeConfig(), out)
    assert manifest["regenerated"]
    for form, entry in manifest["models"].items():
        model_dir = out / entry["dir"]
        assert parse_config((model_dir / "config.pbtxt").read_text()).name == entry["name"]
        assert IOSpec.from_json((model_dir / "iospec.json").read_text()) == SPEC
    assert (out / "student_tiny_python" / "1" / "model.py").is_file()
    assert (out / "student_tiny_onnx" / "1" / "model.onnx").read_bytes() == graph.onnx.read_bytes()
    assert manifest["models"]["tensorrt"]["weights"] is None  # no engine in this artifact
    assert manifest["models"]["openvino"]["weights"] == "1/model.onnx"  # no IR: OpenVINO reads the ONNX graph
    assert parse_config((out / "student_tiny_openvino" / "config.pbtxt").read_text()).default_model_filename == \
        "model.onnx"
    assert not (out / "student_tiny_trt" / "1" / "model.plan").exists()
    assert not generate_repository(graph, ServeConfig(), out)["regenerated"]  # unchanged inputs: kept
    (out / "student_tiny_python" / "1" / "model.onnx").unlink()  # a fresh clone: configs but no weights
    assert generate_repository(graph, ServeConfig(), out)["regenerated"]
    assert (out / "student_tiny_python" / "1" / "model.onnx").is_file()
    changed = generate_repository(graph, ServeConfig(instances=3), out)
    assert changed["regenerated"]
    assert parse_config((out / "student_tiny_python" / "config.pbtxt").read_text()).instance_group[0].count == 3
    assert not list(tmp_path.glob("*.partial"))


def _fake_ir(folder: Path) -> Path:
    """Stand-in IR files: the generator only places them, it never reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_int8.xml").write_text("<net/>")
    (folder / "model_int8.bin").write_bytes(b"\0" * 16)
    return folder / "model_int8.xml"


def test_repository_serves_the_openvino_ir_when_the_artifact_has_one(tmp_path):
    ir = _fake_ir(tmp_path / "ir")
    graph = _served(tmp_path, openvino=ir, openvino_sha256="cd" * 32)
    out = tmp_path / "repo"
    manifest = generate_repository(graph, ServeConfig(), out)
    entry = manifest["models"]["openvino"]
    assert entry == {"name": "student_tiny_openvino", "dir": "student_tiny_openvino", "weights": "1/model.xml",
                     "platform": "openvino"}
    version = out / "student_tiny_openvino" / "1"
    assert (version / "model.xml").read_bytes() == ir.read_bytes()
    assert (version / "model.bin").read_bytes() == ir.with_suffix(".bin").read_bytes()
    config = parse_config((out / "student_tiny_openvino" / "config.pbtxt").read_text())
    assert config.default_model_filename == "model.xml" and config.parameters["graph_sha256"].string_value == "cd" * 32
    assert manifest["openvino_sha256"] == "cd" * 32
    # the python form keeps the ONNX graph on ONNX Runtime, and takes the IR on OpenVINO
    assert manifest["models"]["python"]["weights"] == "1/model.onnx"
    on_openvino = generate_repository(graph, ServeConfig(python_runtime="openvino"), out)
    assert on_openvino["regenerated"] and on_openvino["models"]["python"]["weights"] == "1/model.xml"
    assert (out / "student_tiny_python" / "1" / "model.bin").is_file()
    # an IR without its .bin is not a complete repository
    (version / "model.bin").unlink()
    assert generate_repository(graph, ServeConfig(python_runtime="openvino"), out)["regenerated"]
    assert (version / "model.bin").is_file()


def test_repository_refuses_foreign_directories_and_oversized_batches(tmp_path):
    graph = _served(tmp_path)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a repository sskd-deploy generated"):
        generate_repository(graph, ServeConfig(), foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(InputError, match="serve.max_batch"):
        generate_repository(graph, ServeConfig(max_batch=16), tmp_path / "repo")


# --- install discovery -----------------------------------------------------------------------------------------

def test_locate_reports_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("SSKD_TRITON_HOME", raising=False)
    with pytest.raises(ServeError, match="no bin/tritonserver"):
        locate_triton(triton_home=tmp_path)
    with pytest.raises(ServeError, match="not a virtual environment"):
        locate_triton(backend_env=tmp_path)
    home = tmp_path / "tritonserver"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "tritonserver").write_text("")
    (home / "backends" / "onnxruntime").mkdir(parents=True)
    install = locate_triton(triton_home=home)
    assert install.backends == ("onnxruntime",)


def test_choose_form():
    both = TritonInstall(binary=Path("t"), backends=("onnxruntime", "python", "tensorrt"), backend_dir=None)
    python_only = TritonInstall(binary=Path("t"), backends=("python",), backend_dir=None)
    assert choose_form(both, "auto", has_engine=False) == "onnxruntime"
    assert choose_form(python_only, "auto", has_engine=False) == "python"
    assert choose_form(both, "tensorrt", has_engine=True) == "tensorrt"
    with pytest.raises(ServeError, match="no openvino backend"):
        choose_form(both, "openvino", has_engine=False)
    openvino = TritonInstall(binary=Path("t"), backends=("openvino", "python"), backend_dir=None)
    assert choose_form(openvino, "openvino", has_engine=False) == "openvino"
    assert choose_form(openvino, "auto", has_engine=False) == "python"
    with pytest.raises(ServeError, match="no TensorRT engine"):
        choose_form(both, "tensorrt", has_engine=False)
    with pytest.raises(ServeError, match="no onnxruntime backend"):
        choose_form(python_only, "onnxruntime", has_engine=False)


# --- the Python-backend model, with a stand-in for Triton's utilities ------------------------------------------

class _Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, np.asarray(array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class _Response:
    def __init__(self, output_tensors=(), error=None):
        self.outputs, self.error = list(output_tensors), error


class _Request:
    def __init__(self, **tensors):
        self.tensors = {k: _Tensor(k, v) for k, v in tensors.items()}


@pytest.fixture(params=["onnxruntime", "openvino"])
def python_model(request, tmp_path, monkeypatch):
    """The generated model.py, initialised on the small graph with each runtime it offers."""
    runtime = request.param
    pytest.importorskip(runtime)
    fake = types.ModuleType("triton_python_backend_utils")
    fake.Tensor = _Tensor
    fake.InferenceResponse = _Response
    fake.TritonError = lambda message: message
    fake.TritonModelException = RuntimeError
    fake.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    graph = _served(tmp_path)
    repo = generate_repository(graph, ServeConfig(max_batch=4, threads=1, python_runtime=runtime), tmp_path / "repo")
    model_dir = tmp_path / "repo" / repo["models"]["python"]["dir"]
    spec = importlib.util.spec_from_file_location("generated_model", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from google.protobuf import json_format

    config = json_format.MessageToDict(parse_config((model_dir / "config.pbtxt").read_text()),
                                       preserving_proto_field_name=True)
    config["input"][0]["dims"] = [int(d) for d in config["input"][0]["dims"]]
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(model_dir), "model_version": "1"})
    return model


def test_python_model_batches_splits_and_isolates_bad_requests(python_model):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (1, 3, 8, 12), dtype=np.uint8)
    b = rng.integers(0, 255, (2, 3, 8, 12), dtype=np.uint8)
    requests = [_Request(images=a), _Request(images=a.astype(np.float32)), _Request(images=b),
                _Request(images=a[:, :, :4]), _Request(images=a[:0]), _Request(other=a),
                _Request(images=np.concatenate([b, b, b]))]
    responses = python_model.execute(requests)
    assert len(responses) == len(requests)
    good = {0: a, 2: b}
    for i, response in enumerate(responses):
        if i in good:
            assert response.error is None
            scores, labels, masks = (t.as_numpy() for t in response.outputs)
            expected = good[i].astype(np.float32).mean(axis=(1, 2, 3)) / 255
            np.testing.assert_allclose(scores[:, 0], expected, rtol=1e-5)
            assert scores.shape == (len(good[i]), 4) and labels.dtype == np.int64 and masks.shape[1:] == (4, 2, 3)
        else:
            assert response.error and not response.outputs
    assert "dtype float32" in responses[1].error
    assert "shape [1, 3, 4, 12]" in responses[3].error
    assert "empty batch" in responses[4].error
    assert "missing input" in responses[5].error
    assert "exceeds max_batch_size 4" in responses[6].error


# --- client checks, load harness, predict ------------------------------------------------------------------------

def test_metadata_check_names_the_difference():
    from sskd_deploy.runtime.triton_runner import TritonError, check_metadata

    good = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": ["-1", "3", "8", "12"]}],
            "outputs": [{"name": "scores", "datatype": "FP32", "shape": ["-1", "4"]},
                        {"name": "labels", "datatype": "INT64", "shape": ["-1", "4"]},
                        {"name": "mask_logits", "datatype": "FP32", "shape": ["-1", "4", "2", "3"]}]}
    check_metadata(SPEC, good, "m")
    bad = json.loads(json.dumps(good))
    bad["outputs"][0]["datatype"] = "FP16"
    with pytest.raises(TritonError, match="served outputs"):
        check_metadata(SPEC, bad, "m")


class _FakeRunner:
    """Takes ~2 ms per call; every third call fails."""

    def __init__(self):
        self.spec, self.max_batch, self.calls = SPEC, 4, 0
        self.lock = threading.Lock()

    def run(self, images):
        with self.lock:
            self.calls += 1
            n = self.calls
        time.sleep(0.002)
        if n % 3 == 0:
            raise RuntimeError("boom")
        b, k = images.shape[0], SPEC.top_k
        scores = np.full((b, k), 0.9, np.float32)
        masks = np.full((b, k, *SPEC.mask_size), -5.0, np.float32)
        masks[:, 0] = 5.0
        return scores, np.zeros((b, k), np.int64), masks


def test_load_level_counts_requests_failures_and_percentiles():
    from sskd_deploy.bench.load import load_level, parse_levels

    row = load_level(_FakeRunner(), np.zeros((1, 3, 8, 12), np.uint8), concurrency=2, duration_s=0.3, warmup_s=0.05)
    assert row["requests"] > 20 and 0 < row["failures"] < row["requests"]
    assert row["errors"] == ["RuntimeError: boom"]
    assert 1.5 <= row["p50_ms"] <= row["p99_ms"]
    assert row["throughput_rps"] == pytest.approx((row["requests"] - row["failures"]) / row["duration_s"], rel=1e-2)
    assert parse_levels("1, 4,8") == [1, 4, 8]
    with pytest.raises(ValueError, match="'x'"):
        parse_levels("1,x")


def test_predict_files_reports_bad_files_and_writes_coco(tmp_path):
    from PIL import Image

    from sskd_deploy.serving.predict import predict_files, write_predictions

    good = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((16, 24, 3), 40 * i, np.uint8)).save(path)
        good.append(path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")

    class Runner(_FakeRunner):
        def run(self, images):
            self.calls = 1  # never fail
            return super().run(images)

    result = predict_files(Runner(), [good[0], broken, good[1], good[2]], concurrency=2)
    assert result.files == good and [f["file"] for f in result.failures] == [str(broken)]
    out = write_predictions(result, SPEC.class_names, tmp_path / "out")
    data = json.loads(out.read_text())
    assert [img["file_name"] for img in data["images"]] == [str(p) for p in good]
    first = data["annotations"][0]
    assert first["category_id"] == 1 and first["score"] == pytest.approx(0.9)
    assert first["bbox"][2] > 0 and first["area"] > 0 and isinstance(first["segmentation"]["counts"], str)
    assert sorted(p.name for p in (tmp_path / "out" / "overlays").iterdir()) == ["img0.png", "img1.png", "img2.png"]


def test_committed_repository_configs_are_exactly_what_the_generator_writes():
    """triton_models/ is committed (configs only); each config must be the generator's output for the
    IOSpec and settings recorded beside it, so nobody edits one by hand."""
    from sskd_deploy.serving.repository import config_text, read_repository

    root = Path(__file__).resolve().parents[2] / "triton_models"
    manifest = read_repository(root)
    assert manifest is not None, f"{root}: no repository.json"
    settings = ServeConfig(**manifest["settings"])
    assert set(manifest["models"]) == set(FORMS)
    for form, entry in manifest["models"].items():
        spec = IOSpec.from_json((root / entry["dir"] / "iospec.json").read_text())
        assert spec.digest() == manifest["iospec_sha256"]
        ir = (entry["weights"] or "").endswith(".xml")
        expected = config_text(build_config(spec, form, entry["name"], settings, precision=manifest["precision"],
                                            graph_sha256=manifest["openvino_sha256"] if ir else manifest["graph_sha256"],
                                            openvino_ir=ir))
        assert (root / entry["dir"] / "config.pbtxt").read_text() == expected, entry["dir"]
