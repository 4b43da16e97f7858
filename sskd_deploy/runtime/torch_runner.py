"""PyTorch eager behind the Runner interface: the FP32 reference every compiled form is compared with.

It runs the very :class:`~sskd_deploy.models.deploy.DeployWrapper` that the exporter traces and
that training-time validation evaluates, so its numbers are the baseline of the parity ladder.
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


class TorchRunner:
    """Runs ``wrapper`` in eager mode under ``torch.inference_mode``.

    ``run(images)``: uint8 ``(B, 3, H, W)`` numpy -> ``(scores (B, K) f32, labels (B, K) i64,
    mask_logits (B, K, H/4, W/4) f32)`` numpy, exactly as the ONNX graph of the same wrapper.
    """

    def __init__(self, *, wrapper: DeployWrapper, device: str = "cpu", threads: int | None = None,
                 name: str = "torch", max_batch: int = DEFAULT_MAX_BATCH, path: str = "") -> None:
        if threads is not None:
            # process-wide in torch: set only when asked, so a caller's own setting is left alone
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        self.wrapper = wrapper.eval().to(self.device)
        self.spec = wrapper.spec
        self.max_batch = int(max_batch)
        details: dict[str, Any] = {"threads": torch.get_num_threads(), "torch": torch.__version__}
        self.info = RunnerInfo(name=name, backend="torch", precision="fp32", device=str(self.device),
                               provider="eager", path=path, details=details)

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
        with torch.inference_mode():
            outputs = self.wrapper(torch.from_numpy(images).to(self.device))
            arrays = [t.detach().to("cpu").numpy() for t in outputs]
        return check_outputs(self.spec, arrays, images.shape[0])

    def close(self) -> None:
        """Nothing to release beyond the module itself; present for the Runner protocol."""

    def __repr__(self) -> str:
        return f"TorchRunner(name={self.info.name!r}, device={self.info.device!r})"
