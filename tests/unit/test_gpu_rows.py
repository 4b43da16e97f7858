"""The benchmark's GPU-side rows, checked on the CPU: which rows a CUDA machine would get (device query
stubbed), TF32 and compiled runners, torchao INT8 where torchao is installed, and ``gpu``-marked tests
that run the same rows on a real GPU."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sskd_deploy.bench import models as bench_models
from sskd_deploy.bench.models import RowOptions, plan_torch_rows, torch_runners
from sskd_deploy.config.bench import BenchConfig
from sskd_deploy.config.model import model_preset
from sskd_deploy.errors import SSKDError
from sskd_deploy.models.deploy import DeployWrapper
from sskd_deploy.models.maskformer import build_model
from sskd_deploy.runtime import torchao_runner
from sskd_deploy.runtime.torch_runner import TorchRunner
from sskd_deploy.spec import IOSpec

SIZE = (64, 96)
NO_TORCHAO = torchao_runner.torchao_unavailable()
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def wrapper() -> DeployWrapper:
    config = model_preset("student-tiny").with_classes(2).updated(input_size=SIZE)
    torch.manual_seed(0)
    return DeployWrapper(model=build_model(config).eval(), spec=IOSpec.from_model_config(config, ("a", "b"))).eval()


def _images(batch: int = 1) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (batch, 3, *SIZE), dtype=np.uint8)


def _names(plans) -> list[str]:
    return [p.name for p in plans]


def test_cpu_plan_is_the_reference_the_compiled_row_and_torchao_int8() -> None:
    options = RowOptions(compile=True, gpu_dtypes=("tf32", "fp16", "bf16"), torchao="auto")
    plans, skipped = plan_torch_rows(options, cuda=False, torchao_reason=None,
                                     schemes={"int8": None, "float8": "needs sm89"})
    assert _names(plans) == ["torch-fp32", "torch-compiled", "torchao-int8"]
    assert skipped == [{"runner": "torchao-float8", "reason": "needs sm89"}]
    plans, skipped = plan_torch_rows(options, cuda=False, torchao_reason="not installed", schemes={"int8": None})
    assert "torchao-int8" not in _names(plans) and skipped[0]["reason"] == "not installed"


def test_compile_auto_compiles_on_a_gpu_and_says_why_not_on_a_cpu() -> None:
    options = RowOptions(compile="auto", gpu_dtypes=("fp16",), compile_dtypes=("fp16",), torchao="auto")
    plans, skipped = plan_torch_rows(options, cuda=False, torchao_reason=None)
    assert _names(plans) == ["torch-fp32", "torchao-int8"] and not plans[1].compile
    assert skipped[0]["runner"] == "torch-compiled" and "--compile adds it" in skipped[0]["reason"]
    plans, skipped = plan_torch_rows(options, cuda=True, torchao_reason=None, schemes={"int8": None})
    assert "torch-cuda-compiled-fp16" in _names(plans) and plans[-1].compile and not skipped
    assert BenchConfig().compile == "auto" and BenchConfig(compile=True).compile is True


def test_cuda_plan_has_every_gpu_row_and_cudagraph_compiles() -> None:
    options = RowOptions(compile=True, gpu_dtypes=("tf32", "fp16", "bf16"), compile_mode="reduce-overhead",
                         compile_dtypes=("fp16", "bf16"), torchao="auto")
    plans, skipped = plan_torch_rows(options, cuda=True, torchao_reason=None, schemes={"int8": None, "float8": None})
    assert _names(plans) == ["torch-fp32", "torch-cuda-fp32", "torch-cuda-tf32", "torch-cuda-fp16", "torch-cuda-bf16",
                             "torch-cuda-compiled-fp16", "torch-cuda-compiled-bf16", "torchao-cuda-int8",
                             "torchao-cuda-float8"]
    assert not skipped
    by_name = {p.name: p for p in plans}
    assert by_name["torch-fp32"].device == "cpu" and by_name["torch-cuda-tf32"].device == "cuda"
    compiled = by_name["torch-cuda-compiled-bf16"]
    assert compiled.compile and compiled.compile_mode == "reduce-overhead" and compiled.dtype == "bf16"
    assert by_name["torchao-cuda-float8"].compile_mode == "reduce-overhead"
    # a GPU-only run: no CPU row at all
    plans, _ = plan_torch_rows(RowOptions(cpu=False, gpu_dtypes=("fp16",)), cuda=True, torchao_reason=None)
    assert _names(plans) == ["torch-cuda-fp32", "torch-cuda-fp16"]


def test_float8_is_offered_from_compute_capability_8_9(monkeypatch) -> None:
    assert torchao_runner.torchao_schemes("cpu")["float8"] and torchao_runner.torchao_schemes("cpu")["int8"] is None
    for capability, offered in (((9, 0), True), ((8, 9), True), ((8, 0), False), ((7, 5), False)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        schemes = torchao_runner.torchao_schemes("cuda")
        assert (schemes["float8"] is None) == offered, capability
        assert schemes["int8"] is None


def test_torch_runners_follow_the_plan_and_torchao_on_without_torchao_is_an_error(wrapper, monkeypatch) -> None:
    monkeypatch.setattr(bench_models, "cuda_available", lambda: False)
    runners, skipped = torch_runners(wrapper, RowOptions(threads=1, torchao="off"))
    assert list(runners) == ["torch-fp32"] and not skipped
    monkeypatch.setattr(torchao_runner, "torchao_unavailable", lambda: "torchao is not installed (stub)")
    runners, skipped = torch_runners(wrapper, RowOptions(threads=1, torchao="auto"))
    assert list(runners) == ["torch-fp32"]
    assert {s["runner"] for s in skipped} == {"torchao-int8", "torchao-float8"}
    assert "not installed" in next(s["reason"] for s in skipped if s["runner"] == "torchao-int8")
    with pytest.raises(SSKDError, match="torchao is on but torchao is not installed"):
        torch_runners(wrapper, RowOptions(threads=1, torchao="on"))


def test_tf32_row_keeps_the_contract_and_restores_matmul_precision(wrapper) -> None:
    ref = TorchRunner(wrapper=wrapper).run(_images())
    before = torch.get_float32_matmul_precision()
    runner = TorchRunner(wrapper=wrapper, dtype="tf32")
    got = runner.run(_images())
    assert torch.get_float32_matmul_precision() == before
    assert runner.info.precision == "tf32" and runner.info.provider == "eager-tf32"
    assert [a.dtype for a in got] == [a.dtype for a in ref] and np.abs(got[0] - ref[0]).max() < 1e-2
    with pytest.raises(ValueError, match="compile_mode"):
        TorchRunner(wrapper=wrapper, compile=True, compile_mode="fastest")


def test_compiled_runner_reports_compile_time_per_batch_size(wrapper, monkeypatch) -> None:
    calls = []

    def fake_compile(module, **kwargs):  # the real compile takes a minute on 2 cores; the bookkeeping is ours
        calls.append(kwargs)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    runner = TorchRunner(wrapper=wrapper, compile=True, compile_mode="max-autotune")
    assert calls == [{"dynamic": None, "mode": "max-autotune"}]
    assert runner.info.details["compile_mode"] == "max-autotune" and runner.info.provider == "inductor"
    runner.run(_images(1))
    runner.run(_images(1))
    runner.run(_images(2))
    assert sorted(runner.compile_seconds) == [1, 2] and all(v > 0 for v in runner.compile_seconds.values())
    assert TorchRunner(wrapper=wrapper).compile_seconds == {}


@pytest.mark.skipif(NO_TORCHAO is not None, reason=f"torchao unavailable: {NO_TORCHAO}")
def test_torchao_int8_runs_on_the_cpu_close_to_fp32(wrapper) -> None:
    ref = TorchRunner(wrapper=wrapper).run(_images(2))
    runner = torchao_runner.TorchaoRunner(wrapper=wrapper, scheme="int8", compile=False)
    got = runner.run(_images(2))
    assert runner.info.backend == "torchao" and runner.info.precision == "int8"
    assert runner.info.details["config"] == "Int8DynamicActivationInt8WeightConfig"
    assert [a.shape for a in got] == [a.shape for a in ref] and [a.dtype for a in got] == [a.dtype for a in ref]
    assert np.abs(got[0] - ref[0]).max() < 0.1  # scores of a random model move a little under INT8
    linears = [m for m in runner.wrapper.model.modules() if isinstance(m, torch.nn.Linear)]
    swapped = [m for m in linears if type(m.weight) is not torch.nn.Parameter]
    assert swapped and all(torchao_runner.quantizable(m) for m in swapped)
    assert runner.info.details["quantized_linears"] == len(swapped) and runner.info.details["fp32_linears"] == \
        len(linears) - len(swapped) > 0  # the 3-way class head among them
    untouched = [type(m.weight).__name__ for m in wrapper.model.modules() if isinstance(m, torch.nn.Linear)]
    assert set(untouched) == {"Parameter"}  # the FP32 rows keep their weights
    with pytest.raises(ValueError, match="8.9"):
        torchao_runner.TorchaoRunner(wrapper=wrapper, scheme="float8", compile=False)


def test_a_missing_torchao_is_a_clear_error(wrapper, monkeypatch) -> None:
    monkeypatch.setattr(torchao_runner, "torchao_unavailable", lambda: "torchao is not installed (stub)")
    with pytest.raises(RuntimeError, match="not installed"):
        torchao_runner.TorchaoRunner(wrapper=wrapper)


# -- on a real GPU -----------------------------------------------------------------------------

@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_cuda_compiled_cudagraph_rows_match_eager(wrapper, dtype) -> None:
    ref = TorchRunner(wrapper=wrapper, device="cuda", dtype=dtype).run(_images(2))
    runner = TorchRunner(wrapper=wrapper, device="cuda", dtype=dtype, compile=True, compile_mode="reduce-overhead")
    for _ in range(3):  # CUDA graphs are recorded after a warm-up call, then replayed
        got = runner.run(_images(2))
    assert runner.compile_seconds[2] > 0 and runner.info.provider == "inductor-cudagraphs-autocast"
    assert np.abs(got[0] - ref[0]).max() < 0.05


@pytest.mark.gpu
@needs_cuda
@pytest.mark.skipif(NO_TORCHAO is not None, reason=f"torchao unavailable: {NO_TORCHAO}")
def test_torchao_rows_on_cuda(wrapper) -> None:
    ref = TorchRunner(wrapper=wrapper, device="cuda").run(_images(2))
    for scheme, why_not in torchao_runner.torchao_schemes("cuda").items():
        if why_not is not None:
            continue
        runner = torchao_runner.TorchaoRunner(wrapper=wrapper, scheme=scheme, device="cuda", compile=True)
        got = runner.run(_images(2))
        assert np.abs(got[0] - ref[0]).max() < 0.1, scheme
