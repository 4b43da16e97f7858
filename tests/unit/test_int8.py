"""INT8 Q/DQ export of a tiny student: runs in ONNX Runtime, follows TensorRT's rules, keeps the
contract, caches calibration by content, and the AP-budgeted search keeps blocks float for real.

One export per module (~10 s); every quantization after the first calibration is a cache hit.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from sskd_deploy.data.image_io import read_image
from sskd_deploy.errors import InputError
from sskd_deploy.export.int8 import TAIL_PREFIX, prepare_for_quantization, quantize_int8
from sskd_deploy.export.mixed_precision import ap_budgeted_int8, block_of
from sskd_deploy.export.qdq_rules import check_qdq_for_tensorrt
from sskd_deploy.preprocess import preprocess_batch
from sskd_deploy.runtime.onnx_metadata import META_CHECKPOINT, get_metadata, read_onnx_spec
from tests.unit.tiny_graph import export_tiny_student


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(fp32 path, spec, selection, work dir) for student-tiny at 64x96 with random weights."""
    return export_tiny_student(tmp_path_factory.mktemp("int8"), (64, 96))


@pytest.fixture(scope="module")
def int8(tiny):
    fp32, spec, selection, work = tiny
    report = quantize_int8(fp32, work / "int8.onnx", selection=selection, spec=spec, cache_dir=work / "cache")
    return work / "int8.onnx", report


def run(path, images):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})


def _closeness(fp32, int8, images) -> tuple[float, float, float]:
    """(max |score diff|, mean matched mask-logit error / mean |logit|, mean sign agreement)."""
    (s32, _, m32), (s8, l8, m8) = run(fp32, images), run(int8, images)
    assert s8.shape == s32.shape and l8.dtype == np.int64 and m8.shape == m32.shape
    # Top-K order flips between near-equal scores, so each FP32 mask is compared with its closest
    # INT8 mask of the same image.
    errors, agreement = [], []
    for b, k in np.ndindex(m32.shape[:2]):
        j = np.abs(m8[b] - m32[b, k]).mean((1, 2)).argmin()
        errors.append(np.abs(m8[b, j] - m32[b, k]).mean() / np.abs(m32[b, k]).mean())
        agreement.append(((m8[b, j] > 0) == (m32[b, k] > 0)).mean())
    return float(np.abs(s8 - s32).max()), float(np.mean(errors)), float(np.mean(agreement))


def test_int8_graph_runs_close_to_fp32(tiny, int8) -> None:
    """The default student-tiny (with its conv path). Measured on this random-weight model calibrated on
    its 6 sawtooth-and-noise images: max |score diff| 0.020, matched mask-logit error 25 % of mean
    |logit|, sign agreement 0.93: the conv path turns pixel noise into high-frequency logits near 0.
    On a trained student-tiny (19.4 val AP) the same quantizer loses 0.35 AP (README, Export)."""
    fp32, spec, selection, _ = tiny
    images, _ = preprocess_batch([read_image(p) for p in selection.paths], spec.input_size)
    score, error, agreement = _closeness(fp32, int8[0], images)
    assert score < 0.05 and error < 0.35 and agreement > 0.9, (score, error, agreement)


def test_int8_of_the_dpt_path_alone_stays_tight(tmp_path, tiny) -> None:
    """The DPT path alone (conv path off) quantizes tightly: error 4 % of mean |logit|, sign agreement
    0.996 measured; a quantizer regression shows up here first."""
    from sskd_deploy.config.model import model_preset
    from sskd_deploy.export.onnx_export import export_onnx
    from sskd_deploy.models.deploy import DeployWrapper
    from sskd_deploy.models.maskformer import build_model

    _, spec, selection, _ = tiny
    torch.manual_seed(0)
    cfg = model_preset("student-tiny").with_classes(3).updated(input_size=(64, 96), pixel_decoder={"conv_path": False})
    export_onnx(DeployWrapper(model=build_model(cfg).eval(), spec=spec).eval(), tmp_path / "fp32.onnx",
                checkpoint_sha256="0" * 64)
    quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", selection=selection, spec=spec,
                  cache_dir=tmp_path / "cache")
    images, _ = preprocess_batch([read_image(p) for p in selection.paths], spec.input_size)
    score, error, agreement = _closeness(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", images)
    assert score < 0.05 and error < 0.1 and agreement > 0.97, (score, error, agreement)


def test_int8_graph_is_symmetric_per_channel_and_keeps_contract(tiny, int8) -> None:
    _, spec, selection, _ = tiny
    path, report = int8
    model = onnx.load(str(path))
    assert check_qdq_for_tensorrt(model) == []
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert all(not inits[n.input[2]].any() and inits[n.input[2]].dtype == np.int8 for n in qdq)
    per_channel = [n for n in qdq if inits[n.input[1]].size > 1]
    assert per_channel and all(n.input[0] in inits for n in per_channel)  # weights only
    quantized = {n.name for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")}
    assert report["quantized_ops"]["quantized"] == report["quantized_ops"]["total"] == len(quantized)
    dq_outputs = {n.output[0] for n in qdq if n.op_type == "DequantizeLinear"}
    tail = [n for n in model.graph.node if n.name.startswith(TAIL_PREFIX) and n.op_type not in ("QuantizeLinear",
                                                                                                  "DequantizeLinear")]
    assert tail and not any(i in dq_outputs for n in tail for i in n.input)  # the selection tail reads float
    assert all(n.name.startswith("/") for n in model.graph.node)  # module paths survived ORT's optimiser
    meta = get_metadata(model)
    assert meta["sskd_deploy.precision"] == "int8" and meta[META_CHECKPOINT] == "0" * 64
    assert read_onnx_spec(model) == spec
    assert report["quantize_nodes"] > 0 and report["calibration_images"] == len(selection.images)


def test_calibration_cache_hit_and_recalibrate(tiny, int8) -> None:
    fp32, spec, selection, work = tiny
    first = int8[1]
    assert not first["cache_hit"] and first["calibration_batches"] == 1
    cache = work / "cache" / f"{first['calibration_key']}.json"
    assert cache.is_file() and not list((work / "cache").glob(".*tmp*"))
    common = {"selection": selection, "spec": spec, "cache_dir": work / "cache"}
    again = quantize_int8(fp32, work / "again.onnx", **common)
    assert again["cache_hit"] and again["calibration_batches"] == 0
    assert again["calibration_key"] == first["calibration_key"]
    assert (work / "again.onnx").read_bytes() == int8[0].read_bytes()
    cache.write_text("{}")  # a garbled cache: named in the error, and recalibrate must not read it
    with pytest.raises(InputError, match=cache.name):
        quantize_int8(fp32, work / "garbled.onnx", **common)
    fresh = quantize_int8(fp32, work / "fresh.onnx", recalibrate=True, **common)
    assert not fresh["cache_hit"] and fresh["calibration_batches"] == 1 and len(cache.read_text()) > 100


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(tiny, method) -> None:
    fp32, spec, selection, work = tiny
    report = quantize_int8(fp32, work / f"{method}.onnx", selection=selection, spec=spec, method=method,
                           cache_dir=work / "cache", percentile=99.9)
    assert not report["cache_hit"] and report["method"] == method
    assert check_qdq_for_tensorrt(onnx.load(str(work / f"{method}.onnx"))) == []
    images = np.random.default_rng(0).integers(0, 256, (1, 3, *spec.input_size), dtype=np.uint8)
    assert np.isfinite(run(work / f"{method}.onnx", images)[0]).all()


def test_unknown_exclusions_and_methods_are_refused(tiny) -> None:
    fp32, spec, selection, work = tiny
    common = {"selection": selection, "spec": spec, "cache_dir": work / "cache"}
    with pytest.raises(ValueError, match="not in the graph"):
        quantize_int8(fp32, work / "x.onnx", exclude_nodes=["/model/typo/node"], **common)
    with pytest.raises(ValueError, match="unknown calibration method"):
        quantize_int8(fp32, work / "x.onnx", method="kl", **common)
    assert not (work / "x.onnx").exists()


def test_ap_budgeted_search_keeps_sensitive_block_float(tiny, int8) -> None:
    """A fake AP read off the real graph: quantizing mask_embed costs 2 points, class_embed 0.5."""
    fp32, spec, selection, work = tiny
    costs = {"transformer_decoder.mask_embed": 0.02, "transformer_decoder.class_embed": 0.005}

    def evaluate(path) -> float:
        model = onnx.load(str(path))
        dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        quantized = {block_of(n.name) for n in model.graph.node
                     if n.op_type in ("Conv", "MatMul", "Gemm") and any(i in dq_out for i in n.input)}
        return 0.5 - sum(c for b, c in costs.items() if b in quantized)

    report = ap_budgeted_int8(fp32, work / "mixed.onnx", selection=selection, spec=spec, evaluate=evaluate,
                              reference_ap=0.5, max_ap_drop=0.01, cache_dir=work / "cache", candidate_blocks=costs)
    assert report["budget_met"] and report["float_blocks"] == ["transformer_decoder.mask_embed"]
    assert [round(s["ap"], 4) for s in report["steps"]] == [0.475, 0.495]
    assert {s["block"]: round(s["gain"], 4) for s in report["sensitivity"]} == {
        "transformer_decoder.mask_embed": 0.02, "transformer_decoder.class_embed": 0.005}
    final = report["final"]
    assert final["cache_hit"] and final["precision"] == "mixed" and final["excluded_nodes"]
    assert evaluate(work / "mixed.onnx") == pytest.approx(0.495)
    assert get_metadata(onnx.load(str(work / "mixed.onnx")))["sskd_deploy.precision"] == "mixed"
    prepared = prepare_for_quantization(fp32, work / "prepared.onnx")
    assert set(final["excluded_nodes"]) <= {n.name for n in prepared.graph.node}


def test_cpu_target_is_u8_activations_s8_weights_and_runs_in_integer(tiny, int8) -> None:
    """The x86 graph: uint8 activations (asymmetric), int8 symmetric per-channel weights, from the same
    calibration; ONNX Runtime then runs every Conv/MatMul/Gemm in an integer kernel, where the symmetric
    TensorRT graph leaves some in float between Q/DQ pairs (its S8->U8 rewrite skips shared quantizers)."""
    from sskd_deploy.runtime.onnxruntime_runner import runtime_census

    fp32, spec, selection, work = tiny
    report = quantize_int8(fp32, work / "cpu.onnx", selection=selection, spec=spec, cache_dir=work / "cache",
                           target="cpu")
    assert report["target"] == "cpu" and report["cache_hit"]  # one calibration serves both targets
    assert report["calibration_key"] == int8[1]["calibration_key"]
    model = onnx.load(str(work / "cpu.onnx"))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    acts = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert acts and all(inits[n.input[2]].dtype == np.uint8 for n in acts)
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].dtype == np.int8]
    assert weights and all(not inits[n.input[2]].any() for n in weights if len(n.input) > 2)
    assert any(inits[n.input[1]].size > 1 for n in weights)  # per channel
    assert check_qdq_for_tensorrt(model)  # not TensorRT's graph: its rules are not enforced here
    census = report["census"]
    assert census["ops"]["Conv"] == {"quantized": report["quantized_ops"]["total"] - census["ops"]["MatMul"]["quantized"]
                                     - census["ops"].get("Gemm", {}).get("quantized", 0), "float": 0}
    cpu, trt = runtime_census(work / "cpu.onnx"), runtime_census(int8[0])
    assert set(cpu["float"]) <= {"ConvTranspose"}, cpu  # ConvTranspose is never quantized (module docstring)
    assert cpu["integer_fraction"] > trt["integer_fraction"]
    images = np.random.default_rng(1).integers(0, 256, (2, 3, *spec.input_size), dtype=np.uint8)
    (s32, _, _), (s8, _, _) = run(fp32, images), run(work / "cpu.onnx", images)
    assert np.abs(s8 - s32).max() < 0.05
    with pytest.raises(ValueError, match="unknown INT8 target"):
        quantize_int8(fp32, work / "x.onnx", selection=selection, spec=spec, cache_dir=work / "cache", target="arm")


def test_ort_profile_names_top_ops(tiny, int8) -> None:
    from sskd_deploy.runtime.onnxruntime_runner import profile_ort

    _, spec, _, _ = tiny
    images = np.zeros((1, 3, *spec.input_size), np.uint8)
    prof = profile_ort(int8[0], images, threads=1, runs=2, top=100)
    assert prof["runs"] == 2 and prof["total_ms"] > 0 and 5 < len(prof["by_op_type"]) < 100
    ms = [r["ms"] for r in prof["by_op_type"]]
    assert ms == sorted(ms, reverse=True) and sum(r["percent"] for r in prof["by_op_type"]) == pytest.approx(100, abs=1)
    # nodes keep their module path; ORT's own layout nodes (NCHWc reorders) have none
    assert sum(r["name"].startswith("/model/") for r in prof["top_nodes"]) > len(prof["top_nodes"]) / 2
    ops = {r["op_type"]: r["count"] for r in prof["by_op_type"]}
    graph_ops = Counter(n.op_type for n in onnx.load(str(int8[0])).graph.node)
    assert any(op.startswith("QLinear") or op == "MatMulIntegerToFloat" for op in ops)
    assert all(count <= 3 * max(graph_ops.values()) for count in ops.values())  # per run, warm-up dropped
