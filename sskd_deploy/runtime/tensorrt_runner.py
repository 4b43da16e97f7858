"""TensorRT runner: a serialized engine behind the :class:`~sskd_deploy.runtime.base.Runner` interface.

The engine is deserialised once; its IO tensors are checked against the IOSpec stored in the
sidecar (``<engine>.json``) and the sidecar's ``engine_sha256`` against the file, so a stale or
foreign engine fails at load with a message naming it, not later with wrong numbers. Each
``run`` uses TensorRT's name-based API (TensorRT >= 10): ``set_input_shape``,
``set_tensor_address`` for every IO tensor, ``execute_async_v3`` on a dedicated CUDA stream.

torch is the CUDA memory manager: inputs and outputs are torch CUDA tensors from its caching
allocator (no pycuda, no per-call ``cudaMalloc``), and the stream is a ``torch.cuda.Stream``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sskd_deploy.errors import InputError
from sskd_deploy.provenance import hash_bytes
from sskd_deploy.runtime.base import Outputs, RunnerInfo, check_images, check_outputs
from sskd_deploy.runtime.tensorrt_common import (
    TRT_DTYPES,
    TensorRTUnavailable,
    check_io,
    cuda_problem,
    import_tensorrt,
    read_engine_sidecar,
)


def _engine_io(trt: Any, engine: Any) -> list[tuple[str, bool, str, tuple[int, ...]]]:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    return [(name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT, engine.get_tensor_dtype(name).name,
             tuple(engine.get_tensor_shape(name))) for name in names]


class TensorRTRunner:
    """Run a TensorRT engine built by :func:`sskd_deploy.export.tensorrt_build.build_engine`.

    ``run(images)``: uint8 ``(B, 3, H, W)`` with ``B`` within the engine's batch profile ->
    ``(scores, labels, mask_logits)`` as numpy arrays in the IOSpec dtypes.
    """

    def __init__(self, engine_path: str | Path, *, device: str = "cuda:0", name: str | None = None) -> None:
        trt = import_tensorrt("TensorRTRunner")
        problem = cuda_problem()
        if problem is not None:
            raise TensorRTUnavailable(f"TensorRTRunner needs a CUDA GPU: {problem}")
        import torch

        self._torch, self._trt = torch, trt
        self.path = Path(engine_path)
        self.spec, record = read_engine_sidecar(self.path)
        self._device = torch.device(device)
        with torch.cuda.device(self._device):  # TensorRT places the engine on the current device
            self._engine = self._deserialize(record)
            io = _engine_io(trt, self._engine)
            check_io(self.path, io, self.spec)
            low, _, high = self._engine.get_tensor_profile_shape(self.spec.input_name, 0)
            self.min_batch, self.max_batch = int(low[0]), int(high[0])
            self._context = self._engine.create_execution_context()
            self._stream = torch.cuda.Stream(self._device)
        # output buffers take the engine's dtypes (float16 from an FP16 graph); check_outputs casts
        dtypes = {name: getattr(torch, TRT_DTYPES[dtype]) for name, _, dtype, _ in io}
        self._outputs = [(t, dtypes[t.name]) for t in self.spec.outputs]
        precision = record.get("precision", "unknown")
        self.info = RunnerInfo(
            name=name or f"tensorrt-{precision}", backend="tensorrt", precision=precision, device=str(self._device),
            provider=f"TensorRT {trt.__version__}", path=str(self.path),
            details={"batch_profile": record.get("batch"), "built_with": record.get("tensorrt_version"),
                     "built_on": record.get("gpu")},
        )

    def _deserialize(self, record: dict[str, Any]) -> Any:
        data = self.path.read_bytes() if self.path.is_file() else None
        if data is None:
            raise InputError(self.path, "engine file not found")
        if record.get("engine_sha256") != hash_bytes(data):
            raise InputError(self.path, "the engine does not match its sidecar's engine_sha256 (rebuilt or replaced?)")
        self._runtime = self._trt.Runtime(self._trt.Logger(self._trt.Logger.WARNING))
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise InputError(self.path, f"TensorRT {self._trt.__version__} could not deserialize the engine (built "
                                        f"with TensorRT {record.get('tensorrt_version')} on {record.get('gpu')}; "
                                        "engines only load on the TensorRT version and GPU they were built for)")
        return engine

    def run(self, images: np.ndarray) -> Outputs:
        images = check_images(self.spec, images, max_batch=self.max_batch)
        batch = images.shape[0]
        if batch < self.min_batch:
            raise ValueError(f"{self.spec.input_name}: batch {batch} is below this engine's minimum {self.min_batch}")
        torch, context = self._torch, self._context
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            # allocations and the host-to-device copy are ordered on our stream, before the engine
            feed = torch.from_numpy(images).to(self._device, non_blocking=False)
            outputs = [torch.empty(t.shape_for_batch(batch), dtype=dtype, device=self._device)
                       for t, dtype in self._outputs]
            if not context.set_input_shape(self.spec.input_name, tuple(feed.shape)):
                raise RuntimeError(f"{self.path}: TensorRT rejected input shape {tuple(feed.shape)}")
            context.set_tensor_address(self.spec.input_name, feed.data_ptr())
            for (tensor, _), buffer in zip(self._outputs, outputs):
                context.set_tensor_address(tensor.name, buffer.data_ptr())
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"{self.path}: TensorRT execution failed (see its log above)")
            self._stream.synchronize()
        return check_outputs(self.spec, [buffer.cpu().numpy() for buffer in outputs], batch)

    def close(self) -> None:
        # the context must go before the engine, the engine before the runtime that deserialised it
        for attribute in ("_context", "_engine", "_runtime"):
            if hasattr(self, attribute):
                delattr(self, attribute)

