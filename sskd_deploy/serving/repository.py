"""Triton model repository generated from an artifact's IOSpec; no config in it is written by hand.

Four forms of the same contract, each a directory ``<base>_<form>/`` with ``config.pbtxt``, the
``iospec.json`` it was generated from, and version ``1/``:

``<base>_onnx``    ``platform: onnxruntime_onnx`` for NVIDIA's Triton containers (ONNX Runtime backend),
                   optionally with the TensorRT execution accelerator on GPU.
``<base>_trt``     ``platform: tensorrt_plan`` with the artifact's engine (``model.plan``), GPU instances;
                   the config is always written, the plan only when the artifact has one.
``<base>_python``  the Python backend running the same ONNX graph through ONNX Runtime, or through
                   OpenVINO with ``serve.python_runtime: openvino`` (then the artifact's OpenVINO IR when
                   it has one): the form that runs with the ``tritonserver`` of the ``nvidia-pytriton``
                   wheel, which ships no ONNX Runtime, TensorRT or OpenVINO backend.
``<base>_openvino`` ``backend: openvino``, Triton's OpenVINO backend (NVIDIA's CPU containers), on CPU
                   instances: the artifact's OpenVINO IR (``model.xml`` + ``model.bin``) when it has one,
                   else the ONNX graph (``default_model_filename: model.onnx``), which OpenVINO reads too.

The OpenVINO backend fixes the model's batch dimension at ``max_batch_size`` (``ov::set_batch``)
and, unless ``ENABLE_BATCH_PADDING`` is ``YES``, rejects every execution whose batch is smaller,
including the batch-1 warm-up (triton-inference-server/server#7363). So the form sets it: each
execution runs at ``max_batch_size``, padded; choose ``serve.max_batch`` for this form knowing that a
single image costs a full batch. Latency settings follow the backend's README: ``PERFORMANCE_HINT``
``LATENCY``, ``NUM_STREAMS`` 1, ``INFERENCE_NUM_THREADS`` from ``serve.threads``, and ``HINT_BF16``
with ``serve.openvino_precision: bf16``. The other parameters (the IOSpec...) are ignored by the backend.

What travels is the IOSpec: uint8 ``(B, 3, H, W)`` images already resized and padded by the one
:func:`sskd_deploy.preprocess.preprocess_batch`, and the graph's fixed-K outputs (scores, labels,
stride-4 mask logits), which the client turns into instances with the one
:func:`sskd_deploy.evaluation.postprocess.postprocess_batch`. Every config carries the IOSpec and its digest as
parameters, so a client can check the contract of the model it is talking to.

Configs are built as Triton's own ``ModelConfig`` protobuf (from ``tritonclient``), so a misspelt
field fails here, not when the server loads the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sskd_deploy.config.serve import ServeConfig
from sskd_deploy.errors import InputError
from sskd_deploy.io import atomic_directory, atomic_write_json, atomic_write_text
from sskd_deploy.spec import IOSpec

REPOSITORY_FORMAT = "sskd-deploy/triton-repository"
REPOSITORY_MANIFEST = "repository.json"
GENERATOR_VERSION = 2  # bump when the generated layout or configs change, so old repositories regenerate
FORMS = ("onnxruntime", "tensorrt", "python", "openvino")
SUFFIX = {"onnxruntime": "onnx", "tensorrt": "trt", "python": "python", "openvino": "openvino"}
# Not an importable module (no __init__.py beside it): it only imports inside tritonserver.
PYTHON_MODEL_SOURCE = Path(__file__).with_name("backend") / "model.py"
TRITON_DTYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64",
                 "int32": "TYPE_INT32"}


@dataclass(frozen=True)
class ServedGraph:
    """What the generator takes from an artifact: resolved by the caller, which knows the manifest."""

    spec: IOSpec
    onnx: Path  # the graph of the chosen precision
    onnx_sha256: str
    precision: str
    export_max_batch: int  # the graph's dynamic batch range is 1..export_max_batch
    engine: Path | None = None  # the TensorRT plan of the same precision, when the artifact has one
    artifact: str = ""  # where it came from, for the manifest
    openvino: Path | None = None  # the OpenVINO IR (.xml, its .bin beside it) of the same precision, if any
    openvino_sha256: str = ""  # of the IR's .xml

    def serves_ir(self, form: str, settings: ServeConfig) -> bool:
        """Whether ``form`` runs the OpenVINO IR rather than the ONNX graph."""
        return self.openvino is not None and (
            form == "openvino" or (form == "python" and settings.python_runtime == "openvino"))


def base_name(spec: IOSpec, settings: ServeConfig) -> str:
    """Triton model names allow letters, digits, ``_`` and ``-``; ours are ``student_tiny`` style."""
    name = settings.model_name or spec.model_name.replace("-", "_")
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise InputError("serve.model_name", f"{name!r} is not a valid Triton model name (letters, digits, _ and -)")
    return name


def model_names(spec: IOSpec, settings: ServeConfig) -> dict[str, str]:
    base = base_name(spec, settings)
    return {form: f"{base}_{SUFFIX[form]}" for form in FORMS}


def _param(config: Any, key: str, value: str) -> None:
    config.parameters[key].string_value = value


def build_config(spec: IOSpec, form: str, name: str, settings: ServeConfig, *, precision: str,
                 graph_sha256: str, openvino_ir: bool = False) -> Any:
    """Triton ``ModelConfig`` of one form; ``str(text_format)`` of it is the ``config.pbtxt``.

    ``openvino_ir``: the openvino form (or the python form on OpenVINO) serves ``model.xml`` instead
    of ``model.onnx``; ``graph_sha256`` is then the IR's.
    """
    from tritonclient.grpc import model_config_pb2 as mc

    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; expected one of {FORMS}")
    config = mc.ModelConfig(name=name, max_batch_size=settings.max_batch)
    if form == "onnxruntime":
        config.platform, config.backend = "onnxruntime_onnx", "onnxruntime"
        config.default_model_filename = "model.onnx"
    elif form == "tensorrt":
        config.platform, config.backend = "tensorrt_plan", "tensorrt"
        config.default_model_filename = "model.plan"
    elif form == "openvino":
        config.backend = "openvino"
        config.default_model_filename = "model.xml" if openvino_ir else "model.onnx"
    else:
        config.backend = "python"

    def dims(tensor) -> list[int]:
        return list(tensor.shape[1:])  # the batch dimension is implied by max_batch_size

    config.input.add(name=spec.input.name, data_type=getattr(mc, TRITON_DTYPES[spec.input.dtype]),
                     dims=dims(spec.input))
    for tensor in spec.outputs:
        config.output.add(name=tensor.name, data_type=getattr(mc, TRITON_DTYPES[tensor.dtype]), dims=dims(tensor))

    config.dynamic_batching.max_queue_delay_microseconds = settings.max_queue_delay_us
    kind = {"python": mc.ModelInstanceGroup.KIND_CPU, "openvino": mc.ModelInstanceGroup.KIND_CPU,
            "tensorrt": mc.ModelInstanceGroup.KIND_GPU}.get(
        form, mc.ModelInstanceGroup.KIND_GPU if settings.tensorrt_accelerator else mc.ModelInstanceGroup.KIND_AUTO)
    config.instance_group.add(count=settings.instances, kind=kind)

    if form == "onnxruntime" and settings.tensorrt_accelerator:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters["precision_mode"] = "INT8" if precision in ("int8", "mixed") else "FP16"
        accelerator.parameters["max_workspace_size_bytes"] = str(1 << 30)
        accelerator.parameters["trt_engine_cache_enable"] = "true"
    if form in ("onnxruntime", "python") and settings.threads is not None:
        _param(config, "intra_op_thread_count", str(settings.threads))  # the ONNX Runtime backend's own key
    if form == "python":  # read by backend/model.py
        _param(config, "runtime", settings.python_runtime)
        _param(config, "model_file", "model.xml" if openvino_ir else "model.onnx")
        if settings.python_runtime == "openvino":
            _param(config, "precision_hint", settings.openvino_precision)
    if form == "openvino":  # the OpenVINO backend's own keys (its README)
        _param(config, "PERFORMANCE_HINT", "LATENCY")
        _param(config, "NUM_STREAMS", "1")
        _param(config, "ENABLE_BATCH_PADDING", "YES")  # see the module docstring
        if settings.threads is not None:
            _param(config, "INFERENCE_NUM_THREADS", str(settings.threads))
        if settings.openvino_precision == "bf16":
            _param(config, "HINT_BF16", "YES")

    # Warm-up: the first request should not pay for lazy initialisation (ORT arenas, TensorRT contexts).
    for batch in sorted({1, settings.max_batch}):
        warmup = config.model_warmup.add(name=f"zeros_batch{batch}", batch_size=batch, count=2)
        warmup.inputs[spec.input.name].data_type = getattr(mc, TRITON_DTYPES[spec.input.dtype])
        warmup.inputs[spec.input.name].dims.extend(dims(spec.input))
        warmup.inputs[spec.input.name].zero_data = True

    _param(config, "iospec", spec.to_json())
    _param(config, "iospec_sha256", spec.digest())
    _param(config, "precision", precision)
    _param(config, "graph_sha256", graph_sha256)
    _param(config, "generator", f"sskd-deploy repository v{GENERATOR_VERSION}")
    return config


def config_text(config: Any) -> str:
    from google.protobuf import text_format

    header = "# Generated by sskd-deploy from the artifact's IOSpec; regenerate instead of editing.\n"
    return header + text_format.MessageToString(config, use_short_repeated_primitives=True)


def parse_config(text: str) -> Any:
    """``config.pbtxt`` text -> ``ModelConfig`` (comments allowed), for checks and tests."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    return text_format.Parse(text, mc.ModelConfig())


def _settings_key(graph: ServedGraph, settings: ServeConfig) -> str:
    """What the repository's content depends on; equal keys mean regenerating would change nothing."""
    relevant = settings.model_dump(mode="json", include={
        "model_name", "precision", "max_batch", "max_queue_delay_us", "instances", "threads", "tensorrt_accelerator",
        "python_runtime", "openvino_precision"})
    source = {"generator": GENERATOR_VERSION, "graph": graph.onnx_sha256, "spec": graph.spec.digest(),
              "engine": None if graph.engine is None else graph.engine.stat().st_size, "settings": relevant,
              "openvino": graph.openvino_sha256 if graph.openvino is not None else None,
              "python_model": hashlib.sha256(PYTHON_MODEL_SOURCE.read_bytes()).hexdigest()}
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()


def _place(src: Path, dst: Path) -> None:
    """Hard-link a weight file when possible (same file system, no extra disk), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _weights_present(model_dir: Path, weights: str | None) -> bool:
    if weights is None:
        return True
    path = model_dir / weights
    return path.is_file() and (path.suffix != ".xml" or path.with_suffix(".bin").is_file())


def _place_weights(graph: ServedGraph, form: str, settings: ServeConfig, version_dir: Path) -> str | None:
    """Put the form's weights into ``version_dir``; returns their path relative to the model directory."""
    if graph.serves_ir(form, settings):
        _place(graph.openvino, version_dir / "model.xml")
        _place(graph.openvino.with_suffix(".bin"), version_dir / "model.bin")
        return "1/model.xml"
    if form in ("onnxruntime", "python", "openvino"):
        _place(graph.onnx, version_dir / "model.onnx")
        return "1/model.onnx"
    if graph.engine is not None:
        _place(graph.engine, version_dir / "model.plan")
        return "1/model.plan"
    return None


def read_repository(root: Path) -> dict[str, Any] | None:
    path = Path(root) / REPOSITORY_MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("format") == REPOSITORY_FORMAT else None


def generate_repository(graph: ServedGraph, settings: ServeConfig, out: Path | None = None, *,
                        force: bool = False) -> dict[str, Any]:
    """Write (or keep, when up to date) the repository at ``out`` (default ``settings.repository``).

    Returns its manifest: the models, which of them have their weights here, and what they came from.
    The directory is assembled beside ``out`` and swapped in whole, so a half-written repository never
    replaces a working one.
    """
    out = Path(out if out is not None else settings.repository)
    if settings.max_batch > graph.export_max_batch:
        raise InputError("serve.max_batch", f"{settings.max_batch} exceeds the graph's dynamic batch range "
                                            f"1..{graph.export_max_batch} (export.max_batch)")
    key = _settings_key(graph, settings)
    existing = read_repository(out)
    if not force and existing is not None and existing.get("key") == key and all(
            (out / m["dir"] / "config.pbtxt").is_file() and _weights_present(out / m["dir"], m["weights"])
            for m in existing["models"].values()):  # a clone has the committed configs but not the weights
        existing["regenerated"] = False
        return existing
    if out.exists() and existing is None and any(out.iterdir()):
        raise InputError(out, "exists and is not a repository sskd-deploy generated (no repository.json); "
                              "choose another serve.repository or remove it")
    names = model_names(graph.spec, settings)
    models: dict[str, dict[str, Any]] = {}
    with atomic_directory(out, overwrite=True) as tmp:
        for form, name in names.items():
            model_dir = tmp / name
            (model_dir / "1").mkdir(parents=True)
            ir = graph.serves_ir(form, settings)
            config = build_config(graph.spec, form, name, settings, precision=graph.precision,
                                  graph_sha256=graph.openvino_sha256 if ir else graph.onnx_sha256, openvino_ir=ir)
            atomic_write_text(model_dir / "config.pbtxt", config_text(config))
            atomic_write_text(model_dir / "iospec.json", json.dumps(graph.spec.to_dict(), indent=2) + "\n")
            weights = _place_weights(graph, form, settings, model_dir / "1")
            if form == "python":
                shutil.copyfile(PYTHON_MODEL_SOURCE, model_dir / "1" / "model.py")
            models[form] = {"name": name, "dir": name, "weights": weights,
                            "platform": config.platform or config.backend}
        manifest = {
            "format": REPOSITORY_FORMAT, "version": GENERATOR_VERSION, "key": key, "models": models,
            "iospec_sha256": graph.spec.digest(), "precision": graph.precision, "graph_sha256": graph.onnx_sha256,
            "openvino_sha256": graph.openvino_sha256 if graph.openvino is not None else None,
            "artifact": graph.artifact, "settings": settings.model_dump(mode="json"),
        }
        atomic_write_json(tmp / REPOSITORY_MANIFEST, manifest, indent=2)
    manifest["regenerated"] = True
    return manifest
