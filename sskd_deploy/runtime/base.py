"""One Runner interface for every backend: PyTorch, ONNX Runtime, TensorRT (and Triton later).

A runner takes the preprocessed uint8 batch the IOSpec describes and returns the three output
arrays, nothing else: preprocessing and postprocessing are the host's one implementation
(:mod:`sskd_deploy.preprocess`, :mod:`sskd_deploy.evaluation.postprocess`), shared by every runner, so two
runners can only disagree because their graphs compute different numbers. The comparator
(:mod:`sskd_deploy.export.parity`) and the benchmark feed the same arrays to all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sskd_deploy.data.records import Dataset
from sskd_deploy.evaluation import EvalResult
from sskd_deploy.evaluation.prediction import evaluate_dataset, predict_batches
from sskd_deploy.spec import IOSpec
from sskd_deploy.structures import Instances

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]  # scores (B, K) f32, labels (B, K) i64, mask_logits (B, K, h, w) f32


@dataclass(frozen=True)
class RunnerInfo:
    """What a runner is, for reports: ``name`` is unique within one comparison (``onnxruntime-int8``)."""

    name: str
    backend: str  # torch | onnxruntime | tensorrt | triton
    precision: str  # fp32 | fp16 | int8 | mixed
    device: str  # cpu | cuda:0 | ...
    provider: str = ""  # the execution provider / engine that actually ran, when the backend has several
    path: str = ""  # the artifact it runs, if any
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "precision": self.precision, "device": self.device,
                "provider": self.provider, "path": self.path, **({"details": self.details} if self.details else {})}


@runtime_checkable
class Runner(Protocol):
    """Runs the deploy graph: ``run(images)`` with ``images`` uint8 ``(B, 3, H, W)`` at ``spec.input_size``."""

    spec: IOSpec
    info: RunnerInfo
    max_batch: int  # largest batch one call accepts (engine profiles are bounded)

    def run(self, images: np.ndarray) -> Outputs: ...

    def close(self) -> None: ...


def check_images(spec: IOSpec, images: np.ndarray, *, max_batch: int | None = None) -> np.ndarray:
    """``images`` as a C-contiguous uint8 ``(B, 3, H, W)`` array, or a ValueError naming the tensor and the problem."""
    images = np.asarray(images)
    want = spec.input.shape_for_batch(images.shape[0] if images.ndim == 4 else -1)
    if images.dtype != np.uint8:
        raise ValueError(f"{spec.input_name}: dtype {images.dtype}, the model takes uint8")
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(want[1:]):
        raise ValueError(f"{spec.input_name}: shape {tuple(images.shape)}, the model takes (B, {', '.join(map(str, want[1:]))})")
    if images.shape[0] == 0:
        raise ValueError(f"{spec.input_name}: empty batch")
    if max_batch is not None and images.shape[0] > max_batch:
        raise ValueError(f"{spec.input_name}: batch {images.shape[0]} exceeds this runner's maximum {max_batch}")
    return np.ascontiguousarray(images)


def check_outputs(spec: IOSpec, outputs: Sequence[np.ndarray], batch: int) -> Outputs:
    """Cast to the IOSpec dtypes (an FP16 graph may hand back float16) and check the shapes."""
    if len(outputs) != 3:
        raise ValueError(f"expected 3 outputs {spec.output_names}, got {len(outputs)}")
    cast = []
    for array, tensor in zip(outputs, spec.outputs):
        array = np.asarray(array).astype(tensor.dtype, copy=False)
        if tuple(array.shape) != tensor.shape_for_batch(batch):
            raise ValueError(f"{tensor.name}: shape {tuple(array.shape)}, IOSpec says {tensor.shape_for_batch(batch)}")
        cast.append(array)
    return cast[0], cast[1], cast[2]


def run_batched(runner: Runner, images: np.ndarray, batch_size: int | None = None) -> Outputs:
    """Run a stack of any length in chunks of at most ``batch_size`` (default: the runner's maximum)."""
    size = min(batch_size or runner.max_batch, runner.max_batch)
    parts = [runner.run(images[i : i + size]) for i in range(0, len(images), size)]
    return tuple(np.concatenate([p[j] for p in parts]) for j in range(3))  # type: ignore[return-value]


def predict_with(runner: Runner, images: Sequence[np.ndarray], *, batch_size: int = 8,
                 score_threshold: float = 0.0) -> list[Instances]:
    """Preprocess, run, postprocess: RGB uint8 ``(H, W, 3)`` images -> Instances at their own size."""
    return predict_batches(runner.run, runner.spec.input_size, images, batch_size=min(batch_size, runner.max_batch),
                           score_threshold=score_threshold)


def evaluate_with(runner: Runner, dataset: Dataset, *, batch_size: int = 8,
                  progress: Callable[[int, int], None] | None = None) -> tuple[EvalResult, dict[int, Instances]]:
    """Mask AP of ``runner`` on a labeled ``dataset``, computed exactly like the training-time evaluation."""
    return evaluate_dataset(runner.run, runner.spec.input_size, dataset,
                            batch_size=min(batch_size, runner.max_batch), progress=progress)
