"""What the TensorRT builder and runner share: the lazy import, the engine sidecar and the IO check.

TensorRT is an optional extra (``pip install '.[tensorrt]'``) and is imported only inside the
functions that need it, so every module of the package imports without it. When it is missing,
:func:`import_tensorrt` raises :class:`TensorRTUnavailable` with the install instructions instead of
an ``ImportError`` traceback, and :func:`tensorrt_available` says why, for callers that skip.

An engine file holds only what ``build_serialized_network`` returned. Everything else (the IOSpec,
the batch profile, the TensorRT version and GPU it was built with, the source ONNX hash) lives in
a JSON sidecar ``<engine>.json``: prepending metadata to the engine, as some exporters do, makes
the file unreadable to ``trtexec`` and to Triton's TensorRT backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from sskd_deploy.errors import InputError, SSKDError
from sskd_deploy.spec import IOSpec

MIN_TENSORRT_MAJOR = 10  # the name-based IO API (num_io_tensors, set_input_shape, execute_async_v3), INT64 tensors
INSTALL_HINT = (
    "install it with `pip install '.[tensorrt]'` (NVIDIA's wheels download the TensorRT libraries from "
    "https://pypi.nvidia.com, which must be reachable), or on Jetson use the TensorRT that JetPack installs"
)
ENGINE_FORMAT = "sskd-deploy/tensorrt-engine"
ENGINE_FORMAT_VERSION = 1
# TensorRT DataType member name -> numpy dtype name, for the dtypes an exported graph can have at its edges
TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
              "INT32": "int32", "INT64": "int64", "BOOL": "bool"}


class TensorRTUnavailable(SSKDError):
    """TensorRT (or the CUDA device it needs) is not usable on this machine; the message says how to fix it."""


class Availability(NamedTuple):
    """``(ok, reason)``; also truthy/falsy on its own, so ``if tensorrt_available():`` reads naturally."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


def import_tensorrt(purpose: str = "this step") -> ModuleType:
    """The ``tensorrt`` module, or :class:`TensorRTUnavailable` naming ``purpose`` and the install command."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as err:  # OSError: the wheel is there but its shared libraries are not
        raise TensorRTUnavailable(f"{purpose} needs TensorRT, which is not installed ({err}); {INSTALL_HINT}") from None
    version = str(getattr(trt, "__version__", "0"))
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if major < MIN_TENSORRT_MAJOR:
        raise TensorRTUnavailable(f"{purpose} needs TensorRT >= {MIN_TENSORRT_MAJOR}, found {version}; {INSTALL_HINT}")
    return trt


def cuda_problem() -> str | None:
    """Why no CUDA device can be used (torch manages device memory here), or None when one can."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (it manages the GPU memory TensorRT runs in); pip install '.[export]'"
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False)"
    return None


def tensorrt_available() -> Availability:
    """Whether engines can be built and run here; the reason reads well in a 'skipped' report."""
    try:
        trt = import_tensorrt("building and running TensorRT engines")
    except TensorRTUnavailable as err:
        return Availability(False, str(err))
    problem = cuda_problem()
    if problem is not None:
        return Availability(False, f"TensorRT {trt.__version__} is installed but {problem}")
    return Availability(True, f"TensorRT {trt.__version__}")


def sidecar_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def read_engine_sidecar(engine_path: str | Path) -> tuple[IOSpec, dict[str, Any]]:
    """The IOSpec and build record stored beside an engine by :func:`sskd_deploy.export.tensorrt_build.build_engine`."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise InputError(engine_path, f"no sidecar {path.name} beside the engine; build it with sskd-deploy "
                                      "(the sidecar carries the IOSpec the engine was built for)")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(path, f"unreadable engine sidecar ({err})") from None
    if not isinstance(record, dict) or record.get("format") != ENGINE_FORMAT:
        raise InputError(path, f"not an sskd-deploy engine sidecar (format must be {ENGINE_FORMAT!r})")
    if record.get("version") != ENGINE_FORMAT_VERSION:
        raise InputError(path, f"engine sidecar version {record.get('version')!r} is not supported")
    return IOSpec.from_dict(record.get("iospec"), str(path)), record


def _shape_matches(shape: tuple[int, ...], want: tuple[int, ...], partial: bool) -> bool:
    if len(shape) != len(want):
        return False
    return all(d == w or (partial and d == -1) for d, w in zip(shape, want))


def check_io(source: str | Path, tensors: list[tuple[str, bool, str, tuple[int, ...]]], spec: IOSpec, *,
             partial_shapes: bool = False) -> None:
    """Compare ``(name, is_input, TensorRT dtype name, shape)`` of a network or engine with the IOSpec.

    Shapes use ``-1`` for the dynamic batch, as TensorRT reports them. ``partial_shapes`` also
    accepts ``-1`` elsewhere: a parsed network may not know every output size before it is built.
    A float32 output may be float16 (an FP16 graph that does not keep FP32 outputs);
    :func:`~sskd_deploy.runtime.base.check_outputs` casts it back.
    """
    want = {t.name: (True, t) for t in (spec.input,)} | {t.name: (False, t) for t in spec.outputs}
    problems = []
    if sorted(name for name, *_ in tensors) != sorted(want):
        problems.append(f"tensors {sorted(n for n, *_ in tensors)} != IOSpec {sorted(want)}")
    for name, is_input, dtype, shape in tensors:
        if name not in want:
            continue
        wanted_input, tensor = want[name]
        allowed = {tensor.dtype} | ({"float16"} if tensor.dtype == "float32" and not is_input else set())
        if is_input != wanted_input:
            problems.append(f"{name}: is an {'input' if is_input else 'output'} in the engine")
        if TRT_DTYPES.get(dtype, dtype) not in allowed:
            problems.append(f"{name}: dtype {dtype} != IOSpec {tensor.dtype}")
        if not _shape_matches(tuple(shape), tensor.shape, partial_shapes and not is_input):
            problems.append(f"{name}: shape {tuple(shape)} != IOSpec {tensor.shape}")
    if problems:
        raise InputError(source, "does not match its IOSpec: " + "; ".join(problems))
