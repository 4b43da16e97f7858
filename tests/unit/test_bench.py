"""The benchmark harness on stand-in runners: stage timing, warm-up to steady state, percentiles,
roofline attribution, the peaks probe, plots and the ``bench`` settings."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from sskd_deploy.bench.latency import add_speedups, stage_row, time_stages
from sskd_deploy.bench.roofline import attach_roofline, measure_cpu_peaks, peak_for
from sskd_deploy.config.bench import BenchConfig
from sskd_deploy.runtime.base import RunnerInfo
from sskd_deploy.spec import IOSpec

SPEC = IOSpec(model_name="fake", class_names=("a", "b"), input_size=(32, 48), top_k=3)


class SlowStartRunner:
    """Answers with fixed outputs; the first ``slow_calls`` calls sleep ``slow_s``, halving each time (like a
    compiled graph settling)."""

    def __init__(self, *, slow_calls: int = 0, slow_s: float = 0.02, device: str = "cpu") -> None:
        self.spec, self.max_batch, self.calls, self.slow_calls, self.slow_s = SPEC, 4, 0, slow_calls, slow_s
        self.info = RunnerInfo(name="fake", backend="onnxruntime", precision="fp32", device=device)

    def run(self, images: np.ndarray):
        self.calls += 1
        if self.calls <= self.slow_calls:
            time.sleep(self.slow_s / 2 ** (self.calls - 1))
        b = images.shape[0]
        scores = np.tile(np.array([0.9, 0.6, 0.1], np.float32), (b, 1))  # two above the 0.5 threshold
        labels = np.zeros((b, 3), np.int64)
        logits = np.full((b, 3, 8, 12), 5.0, np.float32)
        return scores, labels, logits

    def close(self) -> None:
        pass


def _images(n: int) -> list[np.ndarray]:
    return [np.random.default_rng(i).integers(0, 256, (40, 60, 3), dtype=np.uint8) for i in range(n)]


def test_time_stages_times_pre_infer_post_and_counts_kept_instances() -> None:
    runner = SlowStartRunner()
    samples = time_stages(runner, _images(2), iters=5, warmup=2, score_threshold=0.5)
    assert samples["warmup_calls"] >= 3 and runner.calls == samples["warmup_calls"] + 5  # 3: the steadiness window
    assert samples["timer"] == "perf_counter"
    assert all(len(samples[k]) == 5 for k in ("pre", "infer", "post", "e2e"))
    assert samples["e2e"] == pytest.approx([a + b + c for a, b, c in zip(samples["pre"], samples["infer"],
                                                                         samples["post"])])
    assert samples["kept"] == 2.0
    row = stage_row(samples, batch=2)
    assert row["iters"] == 5 and row["p50_ms"] <= row["p99_ms"]
    assert row["e2e_ms"]["p50"] >= row["p50_ms"] and row["throughput_ips"] == pytest.approx(2000 / row["mean_ms"])


def test_warmup_continues_until_calls_are_steady() -> None:
    runner = SlowStartRunner(slow_calls=5, slow_s=0.16)  # 160, 80, 40, 20, 10 ms, then fast
    samples = time_stages(runner, _images(1), iters=4, warmup=1, score_threshold=0.5)
    assert samples["warmup_calls"] >= 5  # the fixed count alone would have timed the slow calls
    assert max(samples["infer"]) < 9  # ms: no slow call among the timed ones
    assert time_stages(SlowStartRunner(slow_calls=5), _images(1), iters=2, warmup=0)["warmup_calls"] == 0
    with pytest.raises(ValueError, match="iters"):
        time_stages(runner, _images(1), iters=0, warmup=1)


def test_roofline_holds_each_precision_against_its_own_peak() -> None:
    peaks = {"cpu": {"fp32_gflops": 100.0, "int8_gops": 400.0, "memory_gbps": 10.0},
             "cuda": {"fp32_gflops": 1000.0, "fp16_gflops": 4000.0, "bf16_gflops": 3900.0, "int8_gops": 8000.0}}
    assert peak_for({"device": "cpu", "precision": "int8"}, peaks) == ("cpu.int8", 400.0)
    assert peak_for({"device": "cpu", "precision": "fp16"}, peaks) == ("cpu.fp32", 100.0)
    assert peak_for({"device": "cuda:0", "precision": "bf16"}, peaks) == ("cuda.bf16", 3900.0)
    assert peak_for({"device": "cuda:0", "precision": "fp32"}, {"cpu": peaks["cpu"]}) is None
    rows = [{"model": "m", "runner": "r", "device": "cpu", "precision": "int8", "batch": 2, "p50_ms": 10.0,
             "gflops_per_image": 1.0, "parameters": 1000, "io_bytes_per_image": 500},
            {"model": "m", "runner": "torch-fp32", "device": "cpu", "precision": "fp32", "batch": 2, "p50_ms": 40.0,
             "gflops_per_image": 1.0, "parameters": 1000, "io_bytes_per_image": 500}]
    attach_roofline(rows, peaks)
    assert rows[0]["achieved_gflops"] == pytest.approx(200.0)  # 1 GFLOP x 2 images in 10 ms
    assert rows[0]["peak_fraction"] == pytest.approx(0.5) and rows[0]["peak_name"] == "cpu.int8"
    assert rows[0]["intensity"] == pytest.approx(2e9 / (1000 * 1 + 2 * 500))
    assert rows[1]["peak_fraction"] == pytest.approx(0.5)
    add_speedups(rows, "torch-fp32")
    assert rows[0]["speedup_vs_torch-fp32"] == pytest.approx(4.0)


def test_cpu_peaks_are_measured_through_each_library() -> None:
    peaks = measure_cpu_peaks(1, n=128, repeats=2)
    assert peaks["fp32_gflops"] > 0 and peaks["int8_gops"] > 0 and peaks["memory_gbps"] > 0
    assert {"torch.mm", "onnxruntime.MatMul"} <= set(peaks["methods"]["fp32"])
    assert "onnxruntime.MatMulInteger" in peaks["methods"]["int8"]
    assert peaks["fp32_gflops"] == max(peaks["methods"]["fp32"].values())


def test_plots_are_pngs(tmp_path) -> None:
    from sskd_deploy.bench.plots import plot_latency, plot_roofline

    rows = []
    for runner, precision in (("torch-fp32", "fp32"), ("onnxruntime-int8", "int8")):
        for batch in (1, 2):
            rows.append({"model": "m", "runner": runner, "precision": precision, "device": "cpu", "batch": batch,
                         "p50_ms": 10.0 * batch, "throughput_ips": 100.0, "pre_ms": {"p50": 1.0},
                         "post_ms": {"p50": 2.0}, "gflops_per_image": 1.0, "parameters": 10, "io_bytes_per_image": 10})
    pairs = [{"teacher": "t", "student": "s", "runner": "torch-fp32", "teacher_p50_ms": 30.0, "student_p50_ms": 10.0,
              "speedup": 3.0}]
    peaks = {"cpu": {"fp32_gflops": 100.0, "int8_gops": 400.0, "memory_gbps": 10.0}}
    attach_roofline(rows, peaks)
    for path in (plot_latency(rows, pairs, tmp_path / "l.png"), plot_roofline(rows, peaks, tmp_path / "r.png")):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 400


def test_bench_settings_are_validated() -> None:
    assert BenchConfig(batches=(4, 1, 2)).batches == (1, 2, 4)
    # a bare on/off from --set arrives as a YAML boolean
    assert BenchConfig(torchao=False).torchao == "off" and BenchConfig(triton=True).triton == "on"
    for bad in ({"batches": ()}, {"batches": (1, 1)}, {"batches": (0,)}, {"gpu_dtypes": ("fp8",)}, {"compile_dtypes": ("bf16", "bf16")},
                {"compile_mode": "fastest"}, {"torchao": "maybe"},
                {"pairs": (("teacher-tiny",),)}, {"threads": 0}):
        with pytest.raises(ValidationError):
            BenchConfig(**bad)


def test_torch_runner_variants_keep_the_contract() -> None:
    torch = pytest.importorskip("torch")
    from sskd_deploy.config.model import model_preset
    from sskd_deploy.models.deploy import DeployWrapper
    from sskd_deploy.models.maskformer import build_model
    from sskd_deploy.runtime.torch_runner import TorchRunner

    config = model_preset("student-tiny").with_classes(2).updated(input_size=(64, 96))
    torch.manual_seed(0)
    wrapper = DeployWrapper(model=build_model(config).eval(), spec=IOSpec.from_model_config(config, ("a", "b")))
    with pytest.raises(ValueError, match="dtype"):
        TorchRunner(wrapper=wrapper, dtype="fp8")
    # bf16 autocast on the CPU: outputs keep the IOSpec dtypes and stay close to FP32
    images = np.random.default_rng(0).integers(0, 256, (1, 3, 64, 96), dtype=np.uint8)
    ref = TorchRunner(wrapper=wrapper).run(images)
    low = TorchRunner(wrapper=wrapper, dtype="bf16")
    got = low.run(images)
    assert low.info.precision == "bf16" and low.info.provider == "eager-autocast"
    assert [a.dtype for a in got] == [a.dtype for a in ref]
    assert np.abs(got[0] - ref[0]).max() < 0.1


def test_cli_keeps_numpy_blas_to_one_thread_unless_told(monkeypatch) -> None:
    from sskd_deploy.cli import main

    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    assert main(["version"]) == 0
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")  # the user's choice stands
    assert main(["version"]) == 0
    assert os.environ["OPENBLAS_NUM_THREADS"] == "4"


def test_gpu_check_summary_reads_finished_and_stopped_steps(tmp_path) -> None:
    """A bench step stopped by its time limit still counts its measured rows (partial), training speed
    comes from metrics.jsonl without the first (start-up) window."""
    import json

    from sskd_deploy.bench.gpu_check import summarise

    (tmp_path / "steps.tsv").write_text("train_s\tok\t50\nbench_compiled\ttimed out\t90\n")
    metrics = tmp_path / "train_s" / "train" / "supervised" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    lines = [{"step": 10 * i, "step_seconds": 0.5, "samples_per_second": s, "cuda_peak_mib": m, "loss": 1.0}
             for i, (s, m) in enumerate([(2.0, 900.0), (8.0, 1000.0), (10.0, 1000.0), (12.0, 1000.0)], start=1)]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in [*lines, {"step": 40, "val_ap": 1.0}]))
    row = {"model": "m", "runner": "torch-cuda-compiled-bf16", "batch": 1, "p50_ms": 3.0, "throughput_ips": 300.0,
           "compile_s": 41.0}
    (tmp_path / "bench_compiled").mkdir()
    (tmp_path / "bench_compiled" / "latency.partial.jsonl").write_text(json.dumps(row) + "\n")
    summary = summarise(tmp_path)
    assert summary["training"]["s"] == {"stage": "supervised", "steps": 40, "samples_per_second": 10.0,
                                        "cuda_peak_mib": 1000.0, "seconds": None, "final_loss": 1.0}
    assert summary["bench"]["compiled"]["complete"] is False and summary["bench"]["compiled"]["rows"] == [row]
    text = (tmp_path / "summary.md").read_text()
    assert "| bench_compiled | timed out | 90.0 |" in text and "compiled (partial)" in text and "| 41.0 |" in text


def test_keep_going_records_a_failing_runner_and_times_the_rest() -> None:
    from sskd_deploy.bench.models import ModelGroup
    from sskd_deploy.commands.bench import time_group

    class Broken(SlowStartRunner):
        def run(self, images):
            raise RuntimeError("CUDA error: no kernel image\nmore")

    group = ModelGroup(label="m", spec=SPEC, runners={"broken": Broken(), "fine": SlowStartRunner()},
                       gflops_per_image=1.0, parameters=1)
    with pytest.raises(RuntimeError, match="no kernel image"):
        time_group(group, _images(1), BenchConfig(iters=1, warmup=0), batches=[1], log=lambda _: None)
    rows, skipped = time_group(group, _images(1), BenchConfig(iters=1, warmup=0, keep_going=True), batches=[1],
                               log=lambda _: None)
    assert [r["runner"] for r in rows] == ["fine"]
    assert skipped == [{"model": "m", "runner": "broken",
                        "reason": "failed at batch 1: RuntimeError: CUDA error: no kernel image"}]


def test_bench_without_an_artifact_argument_takes_the_one_at_export_out_dir(tmp_path, monkeypatch) -> None:
    """``export.out_dir`` outside the run: bench times the artifact there, not a missing ``<run>/export``."""
    import json

    pytest.importorskip("torch")
    from rich.console import Console

    from sskd_deploy.bench import models
    from sskd_deploy.commands.bench import bench_command
    from sskd_deploy.config import config_from_dict
    from sskd_deploy.export.artifact import ARTIFACT_FORMAT

    elsewhere = tmp_path / "artifacts" / "v1"
    elsewhere.mkdir(parents=True)
    (elsewhere / "manifest.json").write_text(json.dumps({"format": ARTIFACT_FORMAT, "files": {}}))
    synth = {"seed": 0, "num_train": 4, "num_val": 2, "labeled_fraction": 0.5, "image_size": [64, 96]}
    config = config_from_dict({"run": {"out_dir": str(tmp_path / "run")}, "export": {"out_dir": str(elsewhere)},
                               "data": {"root": str(tmp_path / "synth"), "synth": synth},
                               "bench": {"roofline": False, "pairs": [], "threads": 1, "batches": [1]}})
    opened = []

    class Opened(Exception):
        pass

    def artifact_group(path, options):
        opened.append(path)
        raise Opened  # timing the stand-in manifest is not the point

    monkeypatch.setattr(models, "artifact_group", artifact_group)
    with pytest.raises(Opened):
        bench_command(config, None, console=Console(quiet=True))
    assert opened == [elsewhere]
