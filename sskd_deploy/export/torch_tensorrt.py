"""The Torch-TensorRT route: compile the deploy wrapper with ``torch_tensorrt.compile(ir="dynamo")``.

For users who prefer to stay in PyTorch; the ONNX route (:mod:`sskd_deploy.export.tensorrt_build`)
is the one the artifact and Triton use. The same rule holds here: precision lives in the graph.
The engines are strongly typed (``use_explicit_typing=True`` on Torch-TensorRT 2.6-2.12; 2.13, built
on TensorRT 11, has no other mode and dropped the option), so TensorRT runs every op in the dtype
the module computes it in and is never offered a lower one: ``enabled_precisions`` stays FP32.

FP16 is therefore an explicit cast of the module (:class:`HalfPrecisionDeploy`), with the same
edges as the ONNX FP16 graph: uint8 in, normalisation in FP32 (exact, and the IOSpec's input stays
uint8), the network in FP16 except its LayerNorm/GroupNorm (FP16 overflows their sums of squares),
and the top-K selection in FP32 (``select_top_k`` casts up), so outputs keep the IOSpec dtypes.
Matmuls accumulate in FP32 where Torch-TensorRT offers ``use_fp32_acc``. Softmax inside attention
runs in FP16 on this route, unlike the ONNX FP16 graph; the parity gate measures what that costs.

The result is saved with ``torch_tensorrt.save`` as an ExportedProgram (``torch_tensorrt.load``
or ``torch.export.load`` reads it back), written atomically, with the IOSpec in ``<file>.json``.
"""

from __future__ import annotations

import copy
import inspect
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sskd_deploy.io import atomic_write_json
from sskd_deploy.models.deploy import DeployWrapper, select_top_k
from sskd_deploy.runtime.tensorrt_common import TensorRTUnavailable, cuda_problem, sidecar_path

PROGRAM_FORMAT = "sskd-deploy/torch-tensorrt"
KEEP_FP32 = (nn.LayerNorm, nn.GroupNorm)
_TORCH_MINOR = ".".join(torch.__version__.split("+")[0].split(".")[:2])
INSTALL_HINT = (f"install the Torch-TensorRT release built for torch {_TORCH_MINOR} (pip install "
                f"'torch-tensorrt=={_TORCH_MINOR}.*' on a CUDA machine), or build an engine from the exported "
                "ONNX graph with sskd_deploy.export.tensorrt_build.build_engine")


class Float32Island(nn.Module):
    """Runs ``module`` in FP32 inside an FP16 network: cast in, compute, cast back."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.float()

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x.float()).to(x.dtype)


def half_network(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in FP16 with every :data:`KEEP_FP32` module wrapped in a :class:`Float32Island`."""
    network = copy.deepcopy(model).half()
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, KEEP_FP32):
                setattr(parent, name, Float32Island(child))
    return network


class HalfPrecisionDeploy(nn.Module):
    """The deploy graph with its network in FP16: same input, same outputs (dtypes included) as the wrapper."""

    def __init__(self, wrapper: DeployWrapper) -> None:
        super().__init__()
        self.spec = wrapper.spec
        self.network = half_network(wrapper.model)
        self.register_buffer("pixel_mean", torch.tensor(self.spec.pixel_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(self.spec.pixel_std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pixels = (images.to(torch.float32) - self.pixel_mean) / self.pixel_std
        outputs = self.network(pixels.to(torch.float16))
        return select_top_k(outputs["pred_logits"], outputs["pred_masks"], self.spec.top_k)


def import_torch_tensorrt() -> Any:
    try:
        import torch_tensorrt
    except (ImportError, OSError) as err:  # OSError: installed, but TensorRT's libraries are missing
        raise TensorRTUnavailable(f"compile_with_torch_tensorrt needs Torch-TensorRT ({err}); {INSTALL_HINT}") from None
    return torch_tensorrt


def typing_options(torch_trt: Any, precision: str, *, allow_tf32: bool = False) -> dict[str, Any]:
    """Compile options that make the engine strongly typed on the installed Torch-TensorRT."""
    params = inspect.signature(torch_trt.dynamo.compile).parameters
    version = tuple(int(p) for p in str(torch_trt.__version__).split("+")[0].split(".")[:2] if p.isdigit())
    # FP16 comes from the module, never from the builder; TF32 would round what the module keeps in FP32
    options: dict[str, Any] = {"enabled_precisions": {torch.float32}, "disable_tf32": not allow_tf32}
    if "use_explicit_typing" in params:
        options["use_explicit_typing"] = True
    elif version < (2, 13):  # before 2.6 engines are weakly typed: TensorRT could pick any enabled precision
        raise TensorRTUnavailable(f"Torch-TensorRT {torch_trt.__version__} cannot build strongly typed engines "
                                  f"(use_explicit_typing arrived in 2.6); {INSTALL_HINT}")
    if precision == "fp16" and "use_fp32_acc" in params:
        options["use_fp32_acc"] = True
    return options


def _export(module: nn.Module, example: Tensor, min_batch: int, max_batch: int) -> Any:
    """``torch.export`` with a symbolic batch, traced at batch >= 2 like the ONNX export (size 1 specialises)."""
    dynamic = None if min_batch == max_batch else ({0: torch.export.Dim("batch", min=min_batch, max=max_batch)},)
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=dynamic, strict=False)


def _save_atomically(torch_trt: Any, compiled: Any, out_path: Path, example: Tensor) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f".{out_path.name}.partial{out_path.suffix}")  # same folder: rename is atomic
    try:
        torch_trt.save(compiled, str(partial), output_format="exported_program", arg_inputs=[example])
        os.replace(partial, out_path)
    finally:
        partial.unlink(missing_ok=True)


def compile_with_torch_tensorrt(
    wrapper: DeployWrapper,
    out_path: str | Path,
    *,
    precision: str = "fp16",
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 8,
    device: str = "cuda:0",
    allow_tf32: bool = False,
) -> dict[str, Any]:
    """Compile ``wrapper`` and save it to ``out_path`` (an ExportedProgram); returns the sidecar record."""
    if precision not in ("fp16", "fp32"):
        raise ValueError(f"precision must be 'fp16' or 'fp32', got {precision!r} (INT8 goes through the Q/DQ ONNX route)")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"batch profile needs 1 <= min <= opt <= max, got {min_batch}/{opt_batch}/{max_batch}")
    torch_trt = import_torch_tensorrt()
    problem = cuda_problem()
    if problem is not None:
        raise TensorRTUnavailable(f"compile_with_torch_tensorrt needs a CUDA GPU: {problem}")
    options = typing_options(torch_trt, precision, allow_tf32=allow_tf32)
    spec, out_path = wrapper.spec, Path(out_path)
    module = (HalfPrecisionDeploy(wrapper) if precision == "fp16" else copy.deepcopy(wrapper)).eval().to(device)
    example = torch.randint(0, 256, spec.input.shape_for_batch(min(max(2, min_batch), max_batch)),
                            dtype=torch.uint8, device=device)
    inputs = [torch_trt.Input(min_shape=spec.input.shape_for_batch(min_batch), opt_shape=spec.input.shape_for_batch(
        opt_batch), max_shape=spec.input.shape_for_batch(max_batch), dtype=torch.uint8)]
    compiled = torch_trt.compile(_export(module, example, min_batch, max_batch), ir="dynamo", inputs=inputs, **options)
    _save_atomically(torch_trt, compiled, out_path, example)
    record = {"format": PROGRAM_FORMAT, "version": 1, "iospec": spec.to_dict(), "iospec_sha256": spec.digest(),
              "precision": precision, "torch_tensorrt_version": str(torch_trt.__version__),
              "batch": {"min": min_batch, "opt": opt_batch, "max": max_batch},
              "options": {k: sorted(map(str, v)) if isinstance(v, set) else v for k, v in options.items()}}
    atomic_write_json(sidecar_path(out_path), record, indent=2)
    return record
