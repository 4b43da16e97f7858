"""Grounded-SAM2 as the timed teacher of a pair: a tiny random weights directory stands in for the
published Swin-L + Hiera-L (same code path, seconds instead of minutes), timed against student-tiny."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sskd_deploy.bench import models as bench_models
from sskd_deploy.bench.grounded import STAGES, GroundedSam2Runner, build_teacher, grounded_group, is_grounded
from sskd_deploy.bench.models import RowOptions
from sskd_deploy.config.bench import BenchConfig
from sskd_deploy.models.grounded_sam2 import class_prompt, large_configs, local_tokenizer
from sskd_deploy.commands.bench import time_pairs
from tests.grounded_tiny import write_tiny_weights

CLASSES = ["person", "traffic_light", "car"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory):
    return write_tiny_weights(tmp_path_factory.mktemp("gsam-bench") / "weights")


def test_pair_names_and_the_local_tokenizer(weights) -> None:
    assert is_grounded("grounded-sam2") and is_grounded(str(weights)) and not is_grounded("teacher-l")
    grounding_cfg, _ = large_configs()
    tokenizer = local_tokenizer(["person", "traffic", "light", "car"], vocab_size=grounding_cfg.text_config.vocab_size)
    assert len(tokenizer) == 30522 and tokenizer.convert_tokens_to_ids(".") == 1012
    prompt, spans, count = class_prompt(tokenizer, CLASSES, grounding_cfg.max_text_len)
    assert prompt == "person . traffic light . car ." and [len(s) for s in spans] == [1, 2, 1]
    assert count == 9  # [CLS] person . traffic light . car . [SEP]: one token per word, as BERT's vocabulary
    odd = local_tokenizer([], vocab_size=1100)  # a name outside the vocabulary still tokenizes, letter by letter
    assert len(class_prompt(odd, ["zebra"], 256)[1][0]) == 5


def test_runner_splits_the_teacher_time_into_its_three_stages(weights, monkeypatch) -> None:
    monkeypatch.setattr(bench_models, "cuda_available", lambda: False)
    group = grounded_group(str(weights), class_names=CLASSES, input_size=(64, 96), options=RowOptions(threads=1))
    assert list(group.runners) == ["torch-fp32"] and group.spec.input_size == (64, 96)
    assert set(group.stage_gflops) == set(STAGES)
    assert sum(group.stage_gflops.values()) == pytest.approx(group.gflops_per_image) and group.gflops_per_image > 0
    runner = group.runners["torch-fp32"]
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 64, 96), dtype=np.uint8)
    scores, labels, logits = runner.run(images)
    k = group.spec.top_k
    assert scores.shape == (2, k) and labels.dtype == np.int64 and logits.shape == (2, k, 16, 24)
    assert labels.max() < len(CLASSES) and 0 <= scores.min() and scores.max() <= 1
    # the same numbers as the teacher's own labeling path (what pseudo-labels are made from)
    out = runner.teacher.predict_queries(torch.from_numpy(images))
    np.testing.assert_allclose(scores, out["class_prob"][..., :-1].amax(-1).numpy(), atol=1e-6)
    assert list(runner.stage_times[-1]) == list(STAGES) and all(v > 0 for v in runner.stage_times[-1].values())
    with pytest.raises(ValueError, match="dtype"):
        GroundedSam2Runner(teacher=runner.teacher, spec=group.spec, dtype="int4")


def test_pair_times_grounded_sam2_at_its_own_size_against_the_student(weights, monkeypatch) -> None:
    monkeypatch.setattr(bench_models, "cuda_available", lambda: False)
    settings = BenchConfig(pairs=((str(weights), "student-tiny"),), input_size=(64, 96), grounded_input_size=(96, 128),
                           iters=2, warmup=0, threads=1, torchao="off")
    images = [np.random.default_rng(i).integers(0, 256, (70, 90, 3), dtype=np.uint8) for i in range(2)]
    rows, pairs = time_pairs(settings, images, class_names=CLASSES, log=lambda _: None)
    (pair,) = pairs
    assert pair["runner"] == "torch-fp32" and pair["input_size"] == [64, 96] and pair["teacher_input_size"] == [96, 128]
    assert pair["speedup"] == pytest.approx(pair["teacher_p50_ms"] / pair["student_p50_ms"])
    assert set(pair["teacher_stages_ms"]) == set(STAGES)
    teacher_row = next(r for r in rows if r["pair_role"] == "teacher")
    assert teacher_row["stages_ms"]["grounding_dino"]["p50"] > 0
    assert sum(v["share"] for v in teacher_row["stages_ms"].values()) == pytest.approx(1.0)
    assert "stages_ms" not in next(r for r in rows if r["pair_role"] == "student")


def test_published_teacher_is_built_from_the_real_configs(monkeypatch) -> None:
    """The published names build Swin-L + Hiera-L; construction is stubbed to the meta device here (the
    real build allocates 2 GB and takes most of a minute on two cores)."""
    import transformers

    built = {}

    def on_meta(cls):
        def make(config):
            with torch.device("meta"):
                built[cls.__name__] = config
                return cls(config)
        return make

    for name in ("GroundingDinoForObjectDetection", "Sam2Model"):
        monkeypatch.setattr(transformers, name, on_meta(getattr(transformers, name)))
    monkeypatch.setattr("sskd_deploy.models.grounded_sam2.GroundedSam2Teacher", lambda **kw: kw)
    parts, label = build_teacher("grounded-sam2", CLASSES)
    assert "Swin-L" in label and built["GroundingDinoForObjectDetection"].backbone_config.embed_dim == 192
    assert built["Sam2Model"].vision_config.backbone_config.blocks_per_stage == [2, 6, 36, 4]
    assert parts["sam2"].config.prompt_encoder_config.image_size == 1024 and parts["class_names"] == CLASSES


def test_bench_command_writes_the_pair_split_and_torchao_parity(weights, tmp_path, monkeypatch) -> None:
    """``bench --pair DIR:student-tiny`` end to end on generated data, with torchao's AP drop when installed."""
    import json

    from sskd_deploy.cli import main
    from sskd_deploy.runtime.torchao_runner import torchao_unavailable

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench_models, "cuda_available", lambda: False)
    out = tmp_path / "bench" / "latency.json"
    data = ["data.root=ds", "data.synth.num_train=6", "data.synth.num_val=3", "data.synth.image_size=[64,96]",
            "data.synth.labeled_fraction=0.5", "run.out_dir=out", "bench.onnx=false", "bench.parity_images=3",
            "bench.grounded_input_size=[64,96]"]
    args = ["bench", "--model", "student-tiny", "--input-size", "64x96", "--batch", "1", "--iters", "1", "--warmup",
            "0", "--no-compile", "--no-roofline", "--threads", "1", "--pair", f"{weights}:student-tiny", "--out", str(out)]
    assert main([*args, *(a for s in data for a in ("--set", s))]) == 0
    result = json.loads(out.read_text())
    (pair,) = result["pairs"]
    assert set(pair["teacher_stages_ms"]) == set(STAGES) and pair["teacher_input_size"] == [64, 96]
    runners = {r["runner"] for r in result["rows"] if not r.get("pair_role")}
    if torchao_unavailable() is None:
        assert runners == {"torch-fp32", "torchao-int8"}
        (row,) = [r for r in result["rows"] if r["runner"] == "torchao-int8"]
        assert row["ap_drop"] is not None and row["precision"] == "int8"
        (report,) = result["parity"].values()
        assert report["images"] == 3 and report["rows"][0]["runner"] == "torchao-int8"
    else:
        assert runners == {"torch-fp32"} and any(s["runner"] == "torchao-int8" for s in result["skipped"])
    assert "compile_s,ap_drop" in out.with_suffix(".csv").read_text().splitlines()[0]
    assert not out.with_name("latency.partial.jsonl").exists()  # removed once the full result is written


def test_torchao_gate_fails_bench_only_when_torchao_is_asked_for(tmp_path, monkeypatch) -> None:
    from sskd_deploy.cli import main
    from sskd_deploy.export import parity
    from sskd_deploy.runtime.torchao_runner import torchao_unavailable

    if torchao_unavailable() is not None:
        pytest.skip(f"torchao unavailable: {torchao_unavailable()}")
    real = parity.compare_runners

    def over_budget(*args, **kwargs):  # the real comparison, then every row over its budget
        report = real(*args, **kwargs)
        for row in report["rows"][1:]:
            row["ok"] = False
        return report

    monkeypatch.setattr(parity, "compare_runners", over_budget)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench_models, "cuda_available", lambda: False)
    base = ["bench", "--model", "student-tiny", "--input-size", "64x96", "--batch", "1", "--iters", "1", "--warmup", "0",
            "--no-compile", "--no-roofline", "--no-pairs", "--threads", "1"]
    sets = ["data.root=ds", "data.synth.num_train=4", "data.synth.num_val=2", "data.synth.image_size=[64,96]",
            "run.out_dir=out", "bench.onnx=false", "bench.parity_images=2"]
    args = [*base, *(a for s in sets for a in ("--set", s))]
    assert main([*args, "--out", str(tmp_path / "auto.json"), "--set", "bench.torchao=auto"]) == 0
    assert main([*args, "--out", str(tmp_path / "on.json"), "--set", "bench.torchao=on"]) == 2
    assert (tmp_path / "on.json").is_file()  # the results are written before the gate fails


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_grounded_rows_on_cuda_split_time_with_events(weights) -> None:
    group = grounded_group(str(weights), class_names=CLASSES, input_size=(64, 96),
                           options=RowOptions(threads=1, gpu_dtypes=("tf32", "fp16", "bf16")))
    assert list(group.runners) == ["torch-cuda-fp32", "torch-cuda-tf32", "torch-cuda-fp16", "torch-cuda-bf16"]
    images = np.random.default_rng(0).integers(0, 256, (1, 3, 64, 96), dtype=np.uint8)
    for runner in group.runners.values():
        scores, _, logits = runner.run(images)
        assert np.isfinite(scores).all() and np.isfinite(logits).all(), runner.info.name
        assert set(runner.stage_times[-1]) == set(STAGES) and all(v > 0 for v in runner.stage_times[-1].values())
