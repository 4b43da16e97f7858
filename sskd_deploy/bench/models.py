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


def torch_runners(wrapper, *, threads: int, compile: bool, gpu_dtypes: Sequence[str], path: str = "",
                  ) -> dict[str, Runner]:
    """Eager FP32 on the CPU (the reference row), compiled, and the CUDA rows when a GPU is present."""
    import copy

    from sskd_deploy.runtime.torch_runner import TorchRunner

    runners: dict[str, Runner] = {"torch-fp32": TorchRunner(wrapper=wrapper, threads=threads, name="torch-fp32",
                                                           path=path)}
    gpu = cuda_available()
    if compile:
        # on a GPU machine the compiled row is the GPU one: that is where a server would run it
        name = "torch-cuda-compiled" if gpu else "torch-compiled"
        runners[name] = TorchRunner(wrapper=copy.deepcopy(wrapper), device="cuda" if gpu else "cpu", threads=threads,
                                    name=name, path=path, compile=True)
    if gpu:
        cuda = copy.deepcopy(wrapper)
        for dtype in ("fp32", *gpu_dtypes):
            runners[f"torch-cuda-{dtype}"] = TorchRunner(wrapper=cuda, device="cuda", threads=threads,
                                                         name=f"torch-cuda-{dtype}", path=path, dtype=dtype)
    return runners


def _cost(model, input_size) -> tuple[float, int]:
    from sskd_deploy.models.info import count_flops

    return count_flops(model, tuple(input_size)) / 1e9, sum(p.numel() for p in model.parameters())


def artifact_group(artifact_dir: Path, *, threads: int, compile: bool, gpu_dtypes: Sequence[str]) -> ModelGroup:
    """The trained student of an export artifact: PyTorch rows from its checkpoint, then every graph."""
    from sskd_deploy.export.artifact import CHECKPOINT, graph_runners, read_manifest
    from sskd_deploy.models.checkpoint import load_model
    from sskd_deploy.models.deploy import DeployWrapper

    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    model, checkpoint = load_model(artifact_dir / CHECKPOINT)
    gflops, params = _cost(model, checkpoint.spec.input_size)
    wrapper = DeployWrapper(model=model, spec=checkpoint.spec)
    runners = torch_runners(wrapper, threads=threads, compile=compile, gpu_dtypes=gpu_dtypes,
                            path=str(artifact_dir / CHECKPOINT))
    graphs, skipped = graph_runners(artifact_dir, manifest, threads)
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
    from sskd_deploy.model_config import model_preset
    from sskd_deploy.models.maskformer import build_model

    config = model_preset(name).with_classes(num_classes)
    if input_size is not None:
        config = config.updated(input_size=tuple(input_size))
    torch.manual_seed(0)
    spec = IOSpec.from_model_config(config, [f"class_{i}" for i in range(num_classes)])
    return DeployWrapper(model=build_model(config).eval(), spec=spec).eval(), f"{name} (random)"


def torch_group(name: str, *, num_classes: int, input_size: Sequence[int] | None, threads: int,
                gpu_dtypes: Sequence[str]) -> ModelGroup:
    """PyTorch rows only (eager CPU, CUDA): what a teacher/student pair is compared with."""
    wrapper, label = build_wrapper(name, num_classes=num_classes, input_size=input_size)
    gflops, params = _cost(wrapper.model, wrapper.spec.input_size)
    runners = torch_runners(wrapper, threads=threads, compile=False, gpu_dtypes=gpu_dtypes)
    return ModelGroup(label=label, spec=wrapper.spec, runners=runners, gflops_per_image=gflops, parameters=params)


def preset_group(preset: str, work_dir: Path, *, num_classes: int, threads: int, calibration_images: Sequence[Path],
                 input_size: Sequence[int] | None = None, compile: bool = False, gpu_dtypes: Sequence[str] = (),
                 log: Callable[[str], None] = print) -> ModelGroup:
    """A preset (or checkpoint) with PyTorch rows plus ONNX Runtime FP32 and INT8 graphs exported from it."""
    from sskd_deploy.export.calibration import select_calibration_images
    from sskd_deploy.export.int8 import quantize_int8
    from sskd_deploy.export.onnx_export import export_onnx
    from sskd_deploy.provenance import hash_bytes
    from sskd_deploy.runtime.onnxruntime_runner import OrtRunner

    wrapper, label = build_wrapper(preset, num_classes=num_classes, input_size=input_size)
    gflops, params = _cost(wrapper.model, wrapper.spec.input_size)
    key = hash_bytes(wrapper.model.config.model_dump_json().encode() + label.encode())[:16]
    folder = Path(work_dir) / f"{Path(preset).stem}-{key}"
    fp32, int8, done = folder / "model_fp32.onnx", folder / "model_int8.onnx", folder / "complete"
    if not done.is_file():
        log(f"{label}: exporting graphs to {folder} (cached for later runs)")
        export_onnx(wrapper, fp32, checkpoint_sha256=f"bench-{key}")
        selection = select_calibration_images(list(calibration_images), count=8, seed=0, min_images=1)
        quantize_int8(fp32, int8, selection=selection, spec=wrapper.spec, method="minmax",
                      cache_dir=folder / "calibration", batch_size=1)
        atomic_write_text(done, "ok\n")
    runners = torch_runners(wrapper, threads=threads, compile=compile, gpu_dtypes=gpu_dtypes)
    runners["onnxruntime-fp32"] = OrtRunner(fp32, threads=threads, name="onnxruntime-fp32")
    runners["onnxruntime-int8"] = OrtRunner(int8, threads=threads, name="onnxruntime-int8")
    return ModelGroup(label=label, spec=wrapper.spec, runners=runners, gflops_per_image=gflops, parameters=params)

