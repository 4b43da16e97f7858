"""PyTorch behind the Runner interface: eager FP32 is the reference every compiled form is compared with.

It runs the very :class:`~sskd_deploy.models.deploy.DeployWrapper` that the exporter traces and
that training-time validation evaluates, so its numbers are the baseline of the parity ladder.
The benchmark also builds two variants of it: ``torch.compile`` (inductor) and, on CUDA,
FP16/BF16 autocast; both keep the same inputs and output dtypes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sskd_deploy.models.deploy import DeployWrapper
from sskd_deploy.runtime.base import Outputs, RunnerInfo, check_images, check_outputs

# Eager PyTorch has no engine profile; the bound only keeps one call's activations in memory.
DEFAULT_MAX_BATCH = 64
AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchRunner:
    """Runs ``wrapper`` in eager mode under ``torch.inference_mode``.

    ``run(images)``: uint8 ``(B, 3, H, W)`` numpy -> ``(scores (B, K) f32, labels (B, K) i64,
    mask_logits (B, K, H/4, W/4) f32)`` numpy, exactly as the ONNX graph of the same wrapper.
    """

    def __init__(self, *, wrapper: DeployWrapper, device: str = "cpu", threads: int | None = None,
                 name: str = "torch", max_batch: int = DEFAULT_MAX_BATCH, path: str = "", dtype: str = "fp32",
                 compile: bool = False) -> None:
        if dtype not in AUTOCAST:
            raise ValueError(f"dtype must be one of {sorted(AUTOCAST)}, got {dtype!r}")
        if threads is not None:
            # process-wide in torch: set only when asked, so a caller's own setting is left alone
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        self.wrapper = wrapper.eval().to(self.device)
        self.spec = wrapper.spec
        self.max_batch = int(max_batch)
        self._autocast = AUTOCAST[dtype]
        # dynamic=None: the first call specialises, a second batch size recompiles once with a symbolic
        # batch dimension instead of once per size (each inductor compile is tens of seconds on a CPU).
        self._forward = torch.compile(self.wrapper, dynamic=None) if compile else self.wrapper
        provider = "inductor" if compile else "eager"
        details: dict[str, Any] = {"threads": torch.get_num_threads(), "torch": torch.__version__}
        if self._autocast is not None:
            provider += "-autocast"
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
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self._autocast,
                                                     enabled=self._autocast is not None):
            outputs = self._forward(torch.from_numpy(images).to(self.device))
            arrays = [t.detach().float().to("cpu").numpy() if t.is_floating_point() else t.detach().to("cpu").numpy()
                      for t in outputs]
        return check_outputs(self.spec, arrays, images.shape[0])

    def close(self) -> None:
        """Nothing to release beyond the module itself; present for the Runner protocol."""

    def __repr__(self) -> str:
        return f"TorchRunner(name={self.info.name!r}, device={self.info.device!r})"
