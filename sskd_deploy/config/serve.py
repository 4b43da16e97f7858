"""The ``serve`` section: how the Triton model repository is generated and how the server is started.

The repository is always generated from an export artifact's IOSpec (``sskd-deploy serve``
regenerates it when the artifact or these settings change); nothing in it is written by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field, Strict

from sskd_deploy.config.types import Count, PathField, Section

Port = Annotated[int, Strict(), Field(ge=0, le=65535)]  # 0: any free port


class ServeConfig(Section):
    repository: PathField = Path("triton_models")  # relative to the working directory
    model_name: Optional[str] = None  # null: the IOSpec's model name ("student-tiny" -> student_tiny)
    precision: Literal["fp32", "fp16", "int8", "mixed"] = "fp32"  # which graph of the artifact is served
    # auto: onnxruntime if installed, else python; openvino: Triton's OpenVINO backend (NVIDIA's containers)
    backend: Literal["auto", "python", "onnxruntime", "tensorrt", "openvino"] = "auto"
    max_batch: Count = 8  # Triton max_batch_size (at most the artifact's export.max_batch)
    max_queue_delay_us: Annotated[int, Strict(), Field(ge=0)] = 0  # extra wait for a fuller batch (0: batch what is queued)
    instances: Count = 1  # model instances (instance_group count)
    threads: Optional[Count] = None  # ONNX Runtime intra-op threads per instance (null: ONNX Runtime's default)
    tensorrt_accelerator: bool = False  # ONNX model on GPU: TensorRT execution accelerator (FP16)
    # What the Python-backend model runs the graph with; openvino must be installed in serve.backend_env.
    python_runtime: Literal["onnxruntime", "openvino"] = "onnxruntime"
    # OpenVINO's INFERENCE_PRECISION_HINT for float layers (openvino form, and python form on openvino):
    # always written, since OpenVINO left alone runs float layers in bf16 on CPUs that have bf16.
    openvino_precision: Literal["f32", "bf16"] = "f32"
    host: str = "127.0.0.1"
    grpc_port: Port = 8001
    http_port: Port = 8000
    metrics_port: Port = 8002
    startup_timeout_s: Annotated[float, Strict(), Field(gt=0)] = 120.0
    triton_home: Optional[PathField] = None  # a Triton install (bin/tritonserver, backends/); null: search
    backend_env: Optional[PathField] = None  # venv the Python backend runs in; null: <this venv>/triton-env
