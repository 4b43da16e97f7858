"""OpenVINO: the runner matches ONNX Runtime on the same graph and reports the precision that really ran;
NNCF quantization writes an IR the runner runs in int8, cached by content like the ONNX INT8 path.

One tiny random student at 64x96 is exported once per module and quantized once; the cache tests
reuse that IR, and prove that a hit runs no NNCF by making ``nncf.quantize`` raise.
"""

from __future__ import annotations


import numpy as np
import pytest

ov = pytest.importorskip("openvino")
nncf = pytest.importorskip("nncf")
torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from sskd_deploy.errors import InputError
from sskd_deploy.export.openvino_int8 import ir_census, quantize_openvino
from sskd_deploy.runtime.base import Runner
from sskd_deploy.runtime.onnxruntime_runner import OrtRunner
from sskd_deploy.runtime.openvino_metadata import get_ir_metadata, read_ir_spec
from sskd_deploy.runtime.openvino_runner import OpenVINORunner, dominant_precision
from tests.unit.tiny_graph import export_tiny_student

INPUT_SIZE = (64, 96)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(fp32 path, spec, selection, work dir) for student-tiny at 64x96 with random weights."""
    return export_tiny_student(tmp_path_factory.mktemp("openvino"), INPUT_SIZE)


@pytest.fixture(scope="module")
def fp32_runner(tiny):
    runner = OpenVINORunner(tiny[0], threads=1)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def int8(tiny):
    fp32, spec, selection, work = tiny
    report = quantize_openvino(fp32, work / "int8.xml", selection=selection, spec=spec, cache_dir=work / "cache")
    return work / "int8.xml", report


def _images(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, 3, *INPUT_SIZE), dtype=np.uint8)


class _NNCFRan(Exception):
    pass


@pytest.fixture
def nncf_forbidden(monkeypatch):
    def refuse(*args, **kwargs):
        raise _NNCFRan("nncf.quantize was called")

    monkeypatch.setattr(nncf, "quantize", refuse)


# --- runner ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 3])
def test_fp32_matches_onnxruntime(tiny, fp32_runner, batch: int) -> None:
    reference = OrtRunner(tiny[0], threads=1)
    images = _images(batch)
    want, got = reference.run(images), fp32_runner.run(images)
    for array, tensor in zip(got, fp32_runner.spec.outputs):
        assert array.shape == tensor.shape_for_batch(batch) and array.dtype == np.dtype(tensor.dtype)
    assert np.abs(got[0] - want[0]).max() <= 1e-3
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], atol=1e-3, rtol=1e-3)
    reference.close()


def test_fp32_census_and_info(fp32_runner) -> None:
    info = fp32_runner.info
    assert isinstance(fp32_runner, Runner)
    assert (info.backend, info.precision, info.device, info.name) == ("openvino", "fp32", "cpu", "openvino-fp32")
    assert info.provider and info.details["precision_hint"] == "f32" and info.details["openvino"]
    census = info.details["census"]
    assert census["Convolution"] == {"f32": sum(census["Convolution"].values())}
    assert {element for counts in census.values() for element in counts} == {"f32"}
    assert "openvino-fp32" in repr(fp32_runner)


def test_bf16_hint_is_reported_as_what_ran(tiny) -> None:
    """bf16 where the CPU has it (this one does: AVX-512 BF16), else OpenVINO runs f32 and the runner says so."""
    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    runner = OpenVINORunner(tiny[0], threads=1, precision="bf16")
    assert runner.info.precision == ("bf16" if has_bf16 else "fp32")
    assert runner.info.name == f"openvino-{runner.info.precision}"
    assert runner.info.details["precision_hint"] == "bf16"
    runner.close()


def test_bad_input_is_rejected_with_the_tensor_name(fp32_runner) -> None:
    with pytest.raises(ValueError, match="images: dtype float32"):
        fp32_runner.run(_images(1).astype(np.float32))
    with pytest.raises(ValueError, match=r"images: shape \(1, 3, 32, 96\)"):
        fp32_runner.run(_images(1)[:, :, :32])
    with pytest.raises(ValueError, match="images: empty batch"):
        fp32_runner.run(_images(1)[:0])
    small = OpenVINORunner(fp32_runner.path, threads=1, max_batch=2)
    with pytest.raises(ValueError, match="exceeds this runner's maximum 2"):
        small.run(_images(3))
    small.close()
    with pytest.raises(RuntimeError, match="closed"):
        small.run(_images(1))


def test_refuses_bad_files_and_settings(tiny, tmp_path) -> None:
    fp32 = tiny[0]
    with pytest.raises(ValueError, match="precision must be one of"):
        OpenVINORunner(fp32, precision="fp16")
    with pytest.raises(InputError, match="model file not found") as err:
        OpenVINORunner(tmp_path / "absent.onnx")
    assert str(tmp_path / "absent.onnx") in str(err.value)
    with pytest.raises(InputError, match="expected an ONNX graph"):
        OpenVINORunner(tmp_path / "model.engine")
    plain = tmp_path / "plain.xml"  # an IR converted without sskd-deploy: no contract inside
    ov.save_model(ov.Core().read_model(str(fp32)), str(plain), compress_to_fp16=False)
    with pytest.raises(InputError, match="no IOSpec in the IR") as err:
        OpenVINORunner(plain)
    assert str(plain) in str(err.value)
    plain.with_suffix(".bin").unlink()
    with pytest.raises(InputError, match=r"plain\.bin are not beside it"):
        OpenVINORunner(plain)


def test_dominant_precision_words() -> None:
    assert dominant_precision({"Convolution": {"u8": 45}, "FullyConnected": {"i8": 100, "f32": 84}}) == "int8"
    assert dominant_precision({"FullyConnected": {"bf16": 10, "f32": 2}}) == "bf16"
    assert dominant_precision({"MatMul": {"f16": 3}}) == "fp16"
    assert dominant_precision({}) == "unknown"


def test_profile_rows_are_sorted(fp32_runner) -> None:
    rows = fp32_runner.profile(_images(1), top=5, repeats=2)
    layers = [r for r in rows if r["group"] == "layer"]
    types = [r for r in rows if r["group"] == "layer_type"]
    assert len(layers) == 5 and rows[:5] == layers
    assert [r["ms"] for r in layers] == sorted((r["ms"] for r in layers), reverse=True)
    assert [r["ms"] for r in types] == sorted((r["ms"] for r in types), reverse=True)
    assert set(layers[0]) == {"group", "name", "layer_type", "exec_type", "ms", "percent", "count"}
    assert sum(r["percent"] for r in types) == pytest.approx(100, abs=0.5)
    assert sum(r["count"] for r in types) >= len(layers)
    assert any(r["layer_type"] == "Convolution" for r in types)


# --- NNCF quantization -----------------------------------------------------------------------------------------

def test_nncf_ir_runs_in_int8_and_keeps_the_contract(tiny, int8, fp32_runner) -> None:
    path, report = int8
    _, spec, selection, _ = tiny
    assert report["precision"] == "int8" and report["method"] == "nncf" and not report["cache_hit"]
    assert report["calibration_images"] == len(selection.images) and report["calibration_batches"] > 0
    assert report["census"]["fake_quantize"] > 0
    assert report["census"]["weights"]["Convolution"]["quantized"] > 0
    assert report["nncf"] == nncf.__version__ and path.with_suffix(".bin").is_file()
    model = ov.Core().read_model(str(path))
    assert read_ir_spec(model, path) == spec
    meta = get_ir_metadata(model)
    assert meta["precision"] == "int8" and meta["source_sha256"] == report["source_sha256"]

    runner = OpenVINORunner(path, threads=1)
    assert runner.info.precision == "int8" and runner.info.name == "openvino-int8"
    assert runner.info.details["graph_precision"] == "int8"
    images = _images(1, seed=1)  # batch 1: the FP32 runner has it compiled already
    (s8, l8, m8), (s32, _, m32) = runner.run(images), fp32_runner.run(images)
    assert l8.dtype == np.int64 and m8.shape == m32.shape
    assert np.abs(s8 - s32).max() < 0.1  # random weights: a loose sanity bound, not an accuracy claim
    runner.close()


def test_cache_hit_runs_no_nncf(tiny, int8, nncf_forbidden) -> None:
    fp32, spec, selection, work = tiny
    path, first = int8
    again = quantize_openvino(fp32, work / "again.xml", selection=selection, spec=spec, cache_dir=work / "cache")
    assert again["cache_hit"] and again["calibration_batches"] == 0
    assert again["calibration_key"] == first["calibration_key"] and again["census"] == first["census"]
    assert (work / "again.xml").read_bytes() == path.read_bytes()
    assert (work / "again.bin").read_bytes() == path.with_suffix(".bin").read_bytes()
    # anything that changes the result is another key: a miss, so NNCF would run
    with pytest.raises(_NNCFRan):
        quantize_openvino(fp32, work / "other.xml", selection=selection, spec=spec, cache_dir=work / "cache",
                          preset="mixed")
    assert not (work / "other.xml").exists()


def test_a_cache_without_its_xml_is_a_miss(tiny, int8, nncf_forbidden, tmp_path) -> None:
    """An interrupted write leaves at most a .bin; that is never taken for a finished IR."""
    fp32, spec, selection, _ = tiny
    cache = tmp_path / "cache"
    cache.mkdir()
    key = int8[1]["calibration_key"]
    (cache / f"{key}.bin").write_bytes(int8[0].with_suffix(".bin").read_bytes())
    with pytest.raises(_NNCFRan):
        quantize_openvino(fp32, tmp_path / "x.xml", selection=selection, spec=spec, cache_dir=cache)
    assert not list(cache.glob("*.xml")) and not (tmp_path / "x.xml").exists()


def test_recalibrate_runs_nncf_and_a_failed_run_keeps_the_cache(tiny, int8, nncf_forbidden) -> None:
    fp32, spec, selection, work = tiny
    cached = sorted((work / "cache").glob(f"{int8[1]['calibration_key']}.*"))
    before = [p.read_bytes() for p in cached]
    with pytest.raises(_NNCFRan):
        quantize_openvino(fp32, work / "re.xml", selection=selection, spec=spec, cache_dir=work / "cache",
                          recalibrate=True)
    assert [p.read_bytes() for p in cached] == before and not (work / "re.xml").exists()
    assert not list((work / "cache").glob(".*tmp*"))  # no temporary files left behind


@pytest.mark.slow  # one more NNCF run (~10 s, mostly NNCF's graph pattern matching)
def test_recalibrate_reruns_and_overwrites(tiny, int8) -> None:
    fp32, spec, selection, work = tiny
    report = quantize_openvino(fp32, work / "re.xml", selection=selection, spec=spec, cache_dir=work / "cache",
                               recalibrate=True)
    assert not report["cache_hit"] and report["calibration_batches"] > 0
    assert report["calibration_key"] == int8[1]["calibration_key"]
    assert report["census"] == int8[1]["census"]
    assert not list((work / "cache").glob(".*tmp*"))


@pytest.mark.slow  # one more NNCF run (~12 s)
def test_exclude_nodes_gives_mixed_and_changes_the_census(tiny, int8) -> None:
    import onnx

    fp32, spec, selection, work = tiny
    graph = onnx.load(str(fp32), load_external_data=False).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"][:3]
    report = quantize_openvino(fp32, work / "mixed.xml", selection=selection, spec=spec, cache_dir=work / "cache",
                               exclude_nodes=convs)
    assert report["precision"] == "mixed" and report["excluded_nodes"] == sorted(convs)
    before, after = int8[1]["census"]["weights"]["Convolution"], report["census"]["weights"]["Convolution"]
    assert after["float"] == before["float"] + 3 and after["quantized"] == before["quantized"] - 3
    assert report["calibration_key"] != int8[1]["calibration_key"]
    assert ir_census(ov.Core().read_model(str(work / "mixed.xml"))) == report["census"]
    runner = OpenVINORunner(work / "mixed.xml", threads=1)
    assert runner.info.details["graph_precision"] == "mixed"
    float_convs = runner.info.details["census"]["Convolution"].get("f32", 0)
    assert float_convs >= 3
    runner.close()


def test_bad_quantization_input_is_refused(tiny, tmp_path, nncf_forbidden) -> None:
    import dataclasses

    fp32, spec, selection, _ = tiny
    with pytest.raises(InputError, match="differs from the one given") as err:
        quantize_openvino(fp32, tmp_path / "q.xml", selection=selection, cache_dir=tmp_path,
                          spec=dataclasses.replace(spec, top_k=spec.top_k + 1))
    assert str(fp32) in str(err.value)
    with pytest.raises(InputError, match="ONNX file not found"):
        quantize_openvino(tmp_path / "absent.onnx", tmp_path / "q.xml", selection=selection, spec=spec,
                          cache_dir=tmp_path)
    with pytest.raises(ValueError, match="exclude_nodes not in the graph"):
        quantize_openvino(fp32, tmp_path / "q.xml", selection=selection, spec=spec, cache_dir=tmp_path,
                          exclude_nodes=["/no/such/node"])
    with pytest.raises(ValueError, match="unknown preset"):
        quantize_openvino(fp32, tmp_path / "q.xml", selection=selection, spec=spec, cache_dir=tmp_path,
                          preset="fast")
    assert not list(tmp_path.glob("*.xml"))
