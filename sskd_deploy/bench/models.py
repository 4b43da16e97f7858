"""The models a benchmark times and the runners of each: an export artifact, a preset, a checkpoint.

A :class:`ModelGroup` is one network at one input size with every runner that can run it here:
PyTorch eager FP32, ``torch.compile``, PyTorch on CUDA (FP32 and FP16/BF16 autocast) when a GPU
is present, and the compiled graphs (ONNX Runtime FP32/FP16/INT8/mixed, TensorRT engines when
TensorRT is installed). Latency does not depend on the weights' values, so a preset that was never
trained (student-s at 512x1024, say) is timed with seeded random weights, exported and quantised
exactly as ``export`` would; those graphs are cached under the work directory by a hash of the
model config, so a second run starts timing at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sskd_deploy.io import atomic_write_text, recorded_path
from sskd_deploy.runtime.base import Runner
from sskd_deploy.spec import IOSpec


@dataclass
class ModelGroup:
    """``runners`` by row name; ``skipped``: ``{"runner", "reason"}`` for forms that cannot run here;
    ``artifact``: the export artifact the runners' files belong to, if any (rows name them relative to it)."""

    label: str
    spec: IOSpec
    runners: dict[str, Runner]
    gflops_per_image: float
    parameters: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    artifact: Path | None = None
    stage_gflops: dict[str, float] = field(default_factory=dict)  # per stage, for a model timed in stages

    def recorded_path(self, path: str) -> str:
        """A runner's file as the benchmark records it: relative to the artifact inside it, else
        absolute; ``""`` (no file) stays empty."""
        if not path:
            return path
        return recorded_path(path, self.artifact) if self.artifact is not None else str(Path(path).absolute())

    @property
    def io_bytes_per_image(self) -> int:
        """uint8 input plus the three outputs (f32 scores, i64 labels, f32 stride-4 mask logits)."""
        (h, w), (mh, mw), k = self.spec.input_size, self.spec.mask_size, self.spec.top_k
        return 3 * h * w + k * (4 + 8) + k * mh * mw * 4

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass(frozen=True)
class RowOptions:
    """Which PyTorch-side rows a model group gets (the ``bench`` settings that decide them)."""

    threads: int = 2
    compile: bool | str = False  # True / False, or "auto": compiled rows only on a GPU machine
    gpu_dtypes: tuple[str, ...] = ()
    compile_mode: str = "default"
    compile_dtypes: tuple[str, ...] = ("fp16", "bf16")
    cpu: bool = True
    torchao: str = "off"  # auto | on | off
    openvino: str = "off"  # auto | on | off: OpenVINO rows (FP32, BF16, NNCF INT8, the symmetric Q/DQ graph)

    @classmethod
    def from_settings(cls, settings: Any) -> RowOptions:
        return cls(threads=settings.threads, compile=settings.compile, gpu_dtypes=tuple(settings.gpu_dtypes),
                   compile_mode=settings.compile_mode, compile_dtypes=tuple(settings.compile_dtypes),
                   cpu=settings.cpu, torchao=settings.torchao, openvino=settings.openvino)

    def openvino_rows(self) -> tuple[bool, str | None]:
        """(whether OpenVINO rows are built, why not when they were asked for or auto found nothing)."""
        from sskd_deploy.export.artifact import openvino_missing

        if self.openvino == "off" or not self.cpu:
            return False, None
        reason = openvino_missing()
        if reason and self.openvino == "on":
            from sskd_deploy.errors import SSKDError

            raise SSKDError(f"bench.openvino is 'on' but OpenVINO cannot be used here: {reason}")
        return reason is None, reason


@dataclass(frozen=True)
class RowPlan:
    """One PyTorch row to build: ``kind`` torch or torchao; ``dtype`` an autocast/TF32 choice or a torchao scheme."""

    name: str
    kind: str
    device: str
    dtype: str
    compile: bool = False
    compile_mode: str = "default"


def plan_torch_rows(options: RowOptions, *, cuda: bool, torchao_reason: str | None,
                    schemes: dict[str, str | None] | None = None) -> tuple[list[RowPlan], list[dict[str, str]]]:
    """The rows a group gets and the ones it cannot (``{"runner", "reason"}``), decided without building anything.

    ``cuda``: a GPU is present; ``torchao_reason``: why torchao cannot be used (``None``: it can);
    ``schemes``: torchao scheme -> why it cannot run on the target device (``None``: it can).
    On a GPU machine every compiled and quantised row runs on the GPU (where a server would run
    it), and ``options.cpu=False`` leaves the CPU out altogether.
    """
    plans: list[RowPlan] = []
    skipped: list[dict[str, str]] = []
    compile_rows = cuda if options.compile == "auto" else bool(options.compile)
    if options.cpu or not cuda:
        plans.append(RowPlan("torch-fp32", "torch", "cpu", "fp32"))
        if compile_rows and not cuda:
            plans.append(RowPlan("torch-compiled", "torch", "cpu", "fp32", compile=True))
        elif options.compile == "auto" and not cuda:
            skipped.append({"runner": "torch-compiled", "reason": "bench.compile: auto leaves torch.compile out on a "
                            "CPU-only machine (about a minute of compiling on 2 cores); --compile adds it"})
    if cuda:
        for dtype in dict.fromkeys(("fp32", *options.gpu_dtypes)):
            plans.append(RowPlan(f"torch-cuda-{dtype}", "torch", "cuda", dtype))
        if compile_rows:
            for dtype in options.compile_dtypes:
                plans.append(RowPlan(f"torch-cuda-compiled-{dtype}", "torch", "cuda", dtype, compile=True,
                                     compile_mode=options.compile_mode))
    if options.torchao != "off":
        device = "cuda" if cuda else "cpu"
        for scheme, why_not in (schemes or {"int8": None}).items():
            name = f"torchao-{scheme}" if device == "cpu" else f"torchao-cuda-{scheme}"
            reason = torchao_reason or why_not
            if reason is None:
                plans.append(RowPlan(name, "torchao", device, scheme, compile=compile_rows,
                                     compile_mode=options.compile_mode if cuda else "default"))
            else:
                skipped.append({"runner": name, "reason": reason})
    return plans, skipped


def torch_runners(wrapper, options: RowOptions, *, path: str = "") -> tuple[dict[str, Runner], list[dict[str, str]]]:
    """The planned PyTorch and torchao runners of ``wrapper`` and the rows skipped here (with why).

    A missing torchao is a skipped row under ``torchao: auto`` and an error under ``on``."""
    import copy

    from sskd_deploy.runtime.torch_runner import TorchRunner

    cuda = cuda_available()
    reason, schemes = None, None
    if options.torchao != "off":
        from sskd_deploy.runtime.torchao_runner import torchao_schemes, torchao_unavailable

        reason = torchao_unavailable()
        if reason is not None and options.torchao == "on":
            from sskd_deploy.errors import SSKDError

            raise SSKDError(f"bench.torchao is on but {reason}")
        schemes = torchao_schemes("cuda" if cuda else "cpu")
    plans, skipped = plan_torch_rows(options, cuda=cuda, torchao_reason=reason, schemes=schemes)
    runners: dict[str, Runner] = {}
    cuda_copy = None
    for plan in plans:
        if plan.kind == "torchao":
            from sskd_deploy.runtime.torchao_runner import TorchaoRunner

            runners[plan.name] = TorchaoRunner(wrapper=wrapper, scheme=plan.dtype, device=plan.device,
                                               threads=options.threads, name=plan.name, path=path,
                                               compile=plan.compile, compile_mode=plan.compile_mode)
            continue
        if plan.compile:  # its own copy: compiling wraps the module
            model = copy.deepcopy(wrapper)
        elif plan.device == "cuda":  # the eager CUDA rows share one copy on the GPU
            cuda_copy = cuda_copy if cuda_copy is not None else copy.deepcopy(wrapper)
            model = cuda_copy
        else:
            model = wrapper
        runners[plan.name] = TorchRunner(wrapper=model, device=plan.device, threads=options.threads, name=plan.name,
                                         path=path, dtype=plan.dtype, compile=plan.compile,
                                         compile_mode=plan.compile_mode)
    return runners, skipped


def _cost(model, input_size) -> tuple[float, int]:
    from sskd_deploy.models.info import count_flops

    return count_flops(model, tuple(input_size)) / 1e9, sum(p.numel() for p in model.parameters())


def artifact_group(artifact_dir: Path, options: RowOptions) -> ModelGroup:
    """The trained student of an export artifact: PyTorch rows from its checkpoint, then every graph."""
    from sskd_deploy.export.artifact import CHECKPOINT, graph_runners, read_manifest
    from sskd_deploy.models.checkpoint import load_model
    from sskd_deploy.models.deploy import DeployWrapper

    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    model, checkpoint = load_model(artifact_dir / CHECKPOINT)
    gflops, params = _cost(model, checkpoint.spec.input_size)
    wrapper = DeployWrapper(model=model, spec=checkpoint.spec)
    runners, skipped = torch_runners(wrapper, options, path=str(artifact_dir / CHECKPOINT))
    with_openvino, _ = options.openvino_rows()
    graphs, graph_skipped = graph_runners(artifact_dir, manifest, options.threads, bench_extras=with_openvino)
    skipped += graph_skipped
    reason = manifest.get("tensorrt", {}).get("skipped")
    if reason and not any(name.startswith("tensorrt") for name in graphs):
        skipped += [{"runner": f"tensorrt-{p}", "reason": f"no engine in the artifact: {reason}"} for p in ("fp16", "int8")]
    return ModelGroup(label=f"{checkpoint.spec.model_name} (trained)", spec=checkpoint.spec,
                      runners={**runners, **graphs}, gflops_per_image=gflops, parameters=params, skipped=skipped,
                      artifact=artifact_dir)


def build_wrapper(name: str, *, num_classes: int, input_size: Sequence[int] | None):
    """``name`` is a preset (random weights, seed 0) or a checkpoint file; returns (wrapper, label)."""
    import torch

    from sskd_deploy.models.deploy import DeployWrapper

    if Path(name).suffix in (".safetensors", ".pt", ".pth"):
        from sskd_deploy.models.checkpoint import load_model

        model, checkpoint = load_model(name)
        if input_size is not None and tuple(input_size) != tuple(checkpoint.spec.input_size):
            from sskd_deploy.errors import InputError

            raise InputError(name, f"input size {list(checkpoint.spec.input_size)}, the benchmark asked for "
                                   f"{list(input_size)}: time checkpoints at their own size")
        return DeployWrapper(model=model, spec=checkpoint.spec).eval(), f"{Path(name).parent.name}/{Path(name).name}"
    from sskd_deploy.config.model import model_preset
    from sskd_deploy.models.maskformer import build_model

    config = model_preset(name).with_classes(num_classes)
    if input_size is not None:
        config = config.updated(input_size=tuple(input_size))
    torch.manual_seed(0)
    spec = IOSpec.from_model_config(config, [f"class_{i}" for i in range(num_classes)])
    return DeployWrapper(model=build_model(config).eval(), spec=spec).eval(), f"{name} (random)"


def torch_group(name: str, *, num_classes: int, input_size: Sequence[int] | None, options: RowOptions) -> ModelGroup:
    """PyTorch rows only (eager CPU, CUDA; no compiled or quantised rows): what a teacher/student pair is
    compared with."""
    wrapper, label = build_wrapper(name, num_classes=num_classes, input_size=input_size)
    gflops, params = _cost(wrapper.model, wrapper.spec.input_size)
    plain = RowOptions(threads=options.threads, gpu_dtypes=options.gpu_dtypes, cpu=options.cpu)
    runners, _ = torch_runners(wrapper, plain)
    return ModelGroup(label=label, spec=wrapper.spec, runners=runners, gflops_per_image=gflops, parameters=params)


def preset_group(preset: str, work_dir: Path, *, num_classes: int, options: RowOptions,
                 calibration_images: Sequence[Path], input_size: Sequence[int] | None = None, onnx: bool = True,
                 log: Callable[[str], None] = print) -> ModelGroup:
    """A preset (or checkpoint) with PyTorch rows plus (``onnx``) the graphs ``export`` would make of it:
    ONNX Runtime FP32 and both INT8 graphs, and OpenVINO's rows when ``options`` ask for them."""
    wrapper, label = build_wrapper(preset, num_classes=num_classes, input_size=input_size)
    gflops, params = _cost(wrapper.model, wrapper.spec.input_size)
    runners, skipped = torch_runners(wrapper, options)
    if onnx:
        graphs, graph_skipped = _graph_runners(wrapper, label, preset, work_dir, options, calibration_images, log)
        runners.update(graphs)
        skipped += graph_skipped
    return ModelGroup(label=label, spec=wrapper.spec, runners=runners, gflops_per_image=gflops, parameters=params,
                      skipped=skipped)


# Random weights are badly conditioned: with masked attention a rounding difference can flip a mask
# cell, so PyTorch's own float32 and float64 differ by 0.9e-3 in score on student-s at 512x1024
# (measured). The export smoke test of a random-weight graph therefore gets this looser bound; a trained
# checkpoint keeps the parity gate's 1e-3.
RANDOM_WEIGHTS_SMOKE_ATOL = 1e-2


def _graph_runners(wrapper, label: str, preset: str, work_dir: Path, options: RowOptions,
                   calibration_images: Sequence[Path], log: Callable[[str], None]) -> tuple[dict[str, Runner], list]:
    """Runners over the graphs of ``wrapper``, exported once and cached by a hash of its config."""
    from sskd_deploy.export.artifact import INT8_GRAPHS, OPENVINO_GRAPHS, runner_name
    from sskd_deploy.export.calibration import select_calibration_images
    from sskd_deploy.export.int8 import quantize_int8
    from sskd_deploy.export.onnx_export import export_onnx
    from sskd_deploy.provenance import hash_bytes
    from sskd_deploy.runtime.onnxruntime_runner import OrtRunner

    key = hash_bytes(wrapper.model.config.model_dump_json().encode() + label.encode())[:16]
    folder = Path(work_dir) / f"{Path(preset).stem}-{key}"
    fp32, done = folder / "model_fp32.onnx", folder / "complete"
    selection = select_calibration_images(list(calibration_images), count=8, seed=0, min_images=1)
    common = dict(selection=selection, spec=wrapper.spec, method="minmax", cache_dir=folder / "calibration",
                  batch_size=1)
    if not done.is_file():
        log(f"{label}: exporting graphs to {folder} (cached for later runs)")
        export_onnx(wrapper, fp32, checkpoint_sha256=f"bench-{key}", smoke_atol=RANDOM_WEIGHTS_SMOKE_ATOL)
        for target, name in INT8_GRAPHS.items():
            quantize_int8(fp32, folder / name, target=target, **common)
        atomic_write_text(done, "ok\n")
    runners: dict[str, Runner] = {"onnxruntime-fp32": OrtRunner(fp32, threads=options.threads, name="onnxruntime-fp32")}
    for target, name in INT8_GRAPHS.items():
        runner = runner_name("onnxruntime", {"precision": "int8", "target": target})
        runners[runner] = OrtRunner(folder / name, threads=options.threads, name=runner)
    with_openvino, reason = options.openvino_rows()
    if not with_openvino:
        return runners, [{"runner": "openvino-*", "reason": reason}] if reason else []
    from sskd_deploy.export.openvino_int8 import quantize_openvino
    from sskd_deploy.runtime.openvino_runner import OpenVINORunner

    ir = folder / OPENVINO_GRAPHS["int8"]
    if not ir.is_file():
        log(f"{label}: NNCF INT8 for OpenVINO (cached for later runs)")
        quantize_openvino(fp32, ir, selection=selection, spec=wrapper.spec, cache_dir=folder / "calibration")
    for name, path, hint in (("openvino-fp32", fp32, "f32"), ("openvino-bf16", fp32, "bf16"),
                             ("openvino-int8", ir, "f32"), ("openvino-int8-qdq", folder / INT8_GRAPHS["tensorrt"], "f32")):
        runners[name] = OpenVINORunner(path, threads=options.threads, name=name, precision=hint)
    return runners, []
