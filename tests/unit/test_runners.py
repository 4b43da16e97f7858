"""TorchRunner and OrtRunner: same numbers for the same inputs, strict input checks, clear file errors.

One tiny random student is exported once per module; every test feeds it generated data.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from sskd_deploy.config.model import model_preset
from sskd_deploy.data.layout import open_dataset_dir
from sskd_deploy.data.synth import SYNTH_CLASSES, generate_synthetic
from sskd_deploy.errors import InputError
from sskd_deploy.export.onnx_export import export_onnx
from sskd_deploy.models.checkpoint import save_checkpoint
from sskd_deploy.models.deploy import DeployWrapper
from sskd_deploy.models.inference import evaluate_wrapper
from sskd_deploy.models.maskformer import build_model
from sskd_deploy.runtime import onnxruntime_runner
from sskd_deploy.runtime.base import Runner, evaluate_with, predict_with, run_batched
from sskd_deploy.runtime.onnxruntime_runner import OrtRunner, resolve_providers
from sskd_deploy.runtime.torch_runner import TorchRunner
from sskd_deploy.spec import IOSpec

INPUT_SIZE = (64, 96)
# pycocotools' decoder trips a numpy 2 deprecation warning; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.manual_seed(0)
    config = model_preset("student-tiny").with_classes(len(SYNTH_CLASSES)).updated(input_size=INPUT_SIZE)
    model = build_model(config).eval()
    spec = IOSpec.from_model_config(config, SYNTH_CLASSES)
    wrapper = DeployWrapper(model=model, spec=spec).eval()
    folder = tmp_path_factory.mktemp("runners")
    export_onnx(wrapper, folder / "m.onnx", checkpoint_sha256="0" * 64)
    save_checkpoint(folder / "m.safetensors", model=model, config=config, spec=spec)
    return {"wrapper": wrapper, "spec": spec, "onnx": folder / "m.onnx", "checkpoint": folder / "m.safetensors"}


@pytest.fixture(scope="module")
def runners(exported: dict) -> tuple[TorchRunner, OrtRunner]:
    return TorchRunner(wrapper=exported["wrapper"]), OrtRunner(exported["onnx"], threads=2)


def _images(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, 3, *INPUT_SIZE), dtype=np.uint8)


@pytest.mark.parametrize("batch", [1, 3])
def test_torch_and_onnxruntime_agree(runners, batch: int) -> None:
    reference, ort_runner = runners
    want, got = reference.run(_images(batch)), ort_runner.run(_images(batch))
    for array, tensor in zip(got, ort_runner.spec.outputs):
        assert array.shape == tensor.shape_for_batch(batch) and array.dtype == np.dtype(tensor.dtype)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], atol=1e-4)
    np.testing.assert_allclose(got[2], want[2], atol=1e-3)


def test_runner_info_and_protocol(runners, exported: dict) -> None:
    reference, ort_runner = runners
    assert isinstance(reference, Runner) and isinstance(ort_runner, Runner)
    assert ort_runner.spec == exported["spec"]
    assert ort_runner.info.provider == "CPUExecutionProvider"
    assert (ort_runner.info.name, ort_runner.info.backend, ort_runner.info.precision) == (
        "onnxruntime-fp32", "onnxruntime", "fp32")
    assert (reference.info.backend, reference.info.precision, reference.info.device) == ("torch", "fp32", "cpu")
    assert ort_runner.info.to_dict()["path"] == str(exported["onnx"])


@pytest.mark.parametrize("which", [0, 1], ids=["torch", "onnxruntime"])
@pytest.mark.parametrize("images, problem", [
    (np.zeros((1, 3, *INPUT_SIZE), np.float32), "dtype float32"),
    (np.zeros((1, 3, 64, 64), np.uint8), "shape (1, 3, 64, 64)"),
    (np.zeros((3, *INPUT_SIZE), np.uint8), "shape (3, 64, 96)"),
    (np.zeros((0, 3, *INPUT_SIZE), np.uint8), "empty batch"),
    (np.zeros((65, 3, *INPUT_SIZE), np.uint8), "exceeds this runner's maximum 64"),
])
def test_bad_inputs_name_the_tensor(runners, which: int, images: np.ndarray, problem: str) -> None:
    with pytest.raises(ValueError, match=rf"^images: .*{re.escape(problem)}"):
        runners[which].run(images)


def test_missing_corrupt_and_foreign_files(tmp_path: Path) -> None:
    import onnx

    with pytest.raises(InputError, match="missing.onnx: ONNX file not found"):
        OrtRunner(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not protobuf\xff\xff\xff")
    with pytest.raises(InputError, match="corrupt.onnx"):
        OrtRunner(corrupt)
    foreign = tmp_path / "foreign.onnx"  # a valid graph, but not ours: no IOSpec in its metadata
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([node], "g", [value], [onnx.helper.make_tensor_value_info("y", 1, [1])])
    onnx.save(onnx.helper.make_model(graph), str(foreign))
    with pytest.raises(InputError, match="foreign.onnx: no IOSpec"):
        OrtRunner(foreign)


def test_missing_gpu_provider_warns_and_reports_cpu(exported: dict) -> None:
    with pytest.warns(RuntimeWarning, match="did not register CUDAExecutionProvider; it fell back"):
        runner = OrtRunner(exported["onnx"], providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert runner.info.provider == "CPUExecutionProvider" and runner.info.device == "cpu"


def test_fp32_graphs_run_without_the_nchwc_rewrite(exported: dict, monkeypatch) -> None:
    """The FP32 graph is the faithful reference: ORT's NCHWc layout rewrite moved a trained student's
    mask logits by 0.28 against PyTorch, so FP32 sessions leave it out (FP16/INT8 keep it)."""
    seen = []
    real = onnxruntime_runner.ort.InferenceSession

    def spy(*args, **kwargs):
        seen.append(kwargs.get("disabled_optimizers"))
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime_runner.ort, "InferenceSession", spy)
    OrtRunner(exported["onnx"], threads=1)
    onnxruntime_runner.runtime_census(exported["onnx"], threads=1)
    assert seen == [["NchwcTransformer"], ["NchwcTransformer"]]
    assert onnxruntime_runner.disabled_optimizers("int8") is None
    assert onnxruntime_runner.disabled_optimizers("fp16") is None


def test_auto_providers_prefer_gpu_when_the_build_offers_it(monkeypatch) -> None:
    assert resolve_providers("auto")[-1] == "CPUExecutionProvider"
    offered = ["CUDAExecutionProvider", "CPUExecutionProvider", "TensorrtExecutionProvider"]
    monkeypatch.setattr(onnxruntime_runner.ort, "get_available_providers", lambda: offered)
    assert resolve_providers("auto") == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("CPUExecutionProvider") == ["CPUExecutionProvider"]


def test_from_checkpoint_matches_the_wrapper(runners, exported: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading must not need any fallback
        loaded = TorchRunner.from_checkpoint(exported["checkpoint"], name="torch-fp32")
    assert loaded.info.name == "torch-fp32" and loaded.info.path == str(exported["checkpoint"])
    images = _images(2, seed=1)
    for a, b in zip(loaded.run(images), runners[0].run(images)):
        np.testing.assert_array_equal(a, b)


def test_run_batched_splits_and_concatenates(runners) -> None:
    _, ort_runner = runners
    images = _images(5, seed=2)
    whole, chunked = ort_runner.run(images), run_batched(ort_runner, images, batch_size=2)
    np.testing.assert_array_equal(chunked[1], whole[1])
    np.testing.assert_allclose(chunked[0], whole[0], atol=1e-6)


def test_evaluate_with_a_runner_equals_training_time_evaluation(runners, exported: dict, tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "ds", seed=0, num_train=2, num_val=3, labeled_fraction=1.0, image_size=(72, 100))
    val = open_dataset_dir(tmp_path / "ds")["val"]
    want, want_predictions = evaluate_wrapper(exported["wrapper"], val, batch_size=2)
    got, predictions = evaluate_with(runners[1], val, batch_size=2)
    assert sorted(predictions) == sorted(r.image_id for r in val.records)
    assert got.num_predictions == want.num_predictions and got.num_images == 3
    assert got.ap == pytest.approx(want.ap, abs=1e-6)
    record = val.records[0]
    instances = predictions[record.image_id]
    assert instances.masks.shape[1:] == (record.height, record.width)
    np.testing.assert_array_equal(instances.labels, want_predictions[record.image_id].labels)
    from sskd_deploy.data.image_io import read_image

    single = predict_with(runners[0], [read_image(record.path)], score_threshold=0.0)
    np.testing.assert_array_equal(single[0].labels, want_predictions[record.image_id].labels)
