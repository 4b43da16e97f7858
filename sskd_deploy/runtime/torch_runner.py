"""PyTorch behind the Runner interface: eager FP32 is the reference every compiled form is compared with.

It runs the very :class:`~sskd_deploy.models.deploy.DeployWrapper` that the exporter traces and
that training-time validation evaluates, so its numbers are the baseline of the parity ladder.
The benchmark also builds variants of it: ``torch.compile`` (inductor; on CUDA optionally with
CUDA graphs through ``mode="reduce-overhead"`` or ``"max-autotune"``), TF32 matmuls, and
FP16/BF16 autocast; all keep the same inputs and output dtypes.

A compiled runner compiles on its first call for each batch size; that call's wall time is kept
in :attr:`TorchRunner.compile_seconds` so a benchmark reports compilation apart from latency.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sskd_deploy.models.deploy import DeployWrapper
from sskd_deploy.runtime.base import Outputs, RunnerInfo, check_images, check_outputs

# Eager PyTorch has no engine profile; the bound only keeps one call's activations in memory.
DEFAULT_MAX_BATCH = 64
AUTOCAST = {"fp32": None, "tf32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@contextmanager
def inference_precision(device: torch.device, autocast: Any, matmul_precision: str | None) -> Iterator[None]:
    """Inference mode under ``autocast`` (a dtype, or None for off) and, when given, a float32 matmul
    precision ("high": TF32) set for the block only and restored afterwards."""
    previous = torch.get_float32_matmul_precision()
    if matmul_precision is not None:
        torch.set_float32_matmul_precision(matmul_precision)
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


class TorchRunner:
    """Runs ``wrapper`` in eager mode under ``torch.inference_mode``.

    ``run(images)``: uint8 ``(B, 3, H, W)`` numpy -> ``(scores (B, K) f32, labels (B, K) i64,
    mask_logits (B, K, H/4, W/4) f32)`` numpy, exactly as the ONNX graph of the same wrapper.
    """

    def __init__(self, *, wrapper: DeployWrapper, device: str = "cpu", threads: int | None = None,
                 name: str = "torch", max_batch: int = DEFAULT_MAX_BATCH, path: str = "", dtype: str = "fp32",
                 compile: bool = False, compile_mode: str = "default") -> None:
        if dtype not in AUTOCAST:
            raise ValueError(f"dtype must be one of {sorted(AUTOCAST)}, got {dtype!r}")
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {list(COMPILE_MODES)}, got {compile_mode!r}")
        if threads is not None:
            # process-wide in torch: set only when asked, so a caller's own setting is left alone
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        self.wrapper = wrapper.eval().to(self.device)
        self.spec = wrapper.spec
        self.max_batch = int(max_batch)
        self._autocast = AUTOCAST[dtype]
        # TF32 is a matmul precision, not a dtype: set for the duration of each call, then restored
        self._matmul_precision = "high" if dtype == "tf32" else None
        # dynamic=None: the first call specialises, a second batch size recompiles once with a symbolic
        # batch dimension instead of once per size (each inductor compile is tens of seconds on a CPU).
        mode = None if compile_mode == "default" else compile_mode
        self._forward = torch.compile(self.wrapper, dynamic=None, mode=mode) if compile else self.wrapper
        self.compiled = bool(compile)
        self.compile_seconds: dict[int, float] = {}  # batch size -> wall time of its first (compiling) call
        provider = "inductor" if compile else "eager"
        details: dict[str, Any] = {"threads": torch.get_num_threads(), "torch": torch.__version__}
        if compile:
            details["compile_mode"] = compile_mode
            if compile_mode in ("reduce-overhead", "max-autotune") and self.device.type == "cuda":
                provider += "-cudagraphs"
        if self._autocast is not None:
            provider += "-autocast"
        if self._matmul_precision is not None:
            provider += "-tf32"
        self.info = RunnerInfo(name=name, backend="torch", precision=dtype, device=str(self.device),
                               provider=provider, path=path, details=details)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> TorchRunner:
        """Build the checkpoint's model, wrap it with the IOSpec saved beside its weights."""
        from sskd_deploy.models.checkpoint import load_model

        model, checkpoint = load_model(path)
        wrapper = DeployWrapper(model=model, spec=checkpoint.spec)
        kwargs.setdefault("path", str(path))
        return cls(wrapper=wrapper, **kwargs)

    def run(self, images: np.ndarray) -> Outputs:
        images = check_images(self.spec, images, max_batch=self.max_batch)
        first = self.compiled and images.shape[0] not in self.compile_seconds
        start = time.perf_counter()
        with inference_precision(self.device, self._autocast, self._matmul_precision):
            outputs = self._forward(torch.from_numpy(images).to(self.device))
            # the copy to the host waits for the device; under CUDA graphs it also takes the
            # outputs out of the graph's memory before the next replay overwrites them
            arrays = [t.detach().float().to("cpu").numpy() if t.is_floating_point()
                      else t.detach().to("cpu").numpy() for t in outputs]
        if first:
            self.compile_seconds[images.shape[0]] = time.perf_counter() - start
        return check_outputs(self.spec, arrays, images.shape[0])

    def close(self) -> None:
        """Nothing to release beyond the module itself; present for the Runner protocol."""

    def __repr__(self) -> str:
        return f"TorchRunner(name={self.info.name!r}, device={self.info.device!r})"
