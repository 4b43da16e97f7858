"""The ``bench`` section: what ``sskd-deploy bench`` (and the main job's bench step) times, and how.

Every figure a benchmark prints depends on these settings, so they are recorded next to the
results: batch sizes, thread count, warm-up and timed iterations, which extra runners are built.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field, Strict, field_validator

from sskd_deploy.config.types import Count, Section

Threshold = Annotated[float, Strict(), Field(ge=0, le=1)]


class BenchConfig(Section):
    batches: tuple[Count, ...] = (1, 4)  # batch sizes timed for every runner (1..B)
    threads: Count = 2  # CPU threads for every runner (torch intra-op and ONNX Runtime)
    iters: Count = 20  # timed calls per runner and batch size
    warmup: Annotated[int, Strict(), Field(ge=0)] = 3  # untimed calls first (compilation happens here)
    # torch.compile (inductor) rows: true | false | auto (on where a GPU is, where compiled PyTorch is a
    # serving option; off on a CPU-only machine, where the first call compiles for about a minute on 2
    # cores and ONNX Runtime / OpenVINO are how CPU models are served; --compile adds it there).
    compile: Union[bool, Literal["auto"]] = "auto"
    roofline: bool = True  # measure FP32/INT8 matmul peaks and memory bandwidth; rows get % of peak
    score_threshold: Threshold = 0.5  # post-processing keeps (and pastes masks of) candidates above this
    models: tuple[str, ...] = ()  # presets also timed with random weights (e.g. student-s)
    pairs: tuple[tuple[str, str], ...] = (("teacher-tiny", "student-tiny"),)  # (teacher, student): preset or checkpoint
    input_size: Optional[tuple[Count, Count]] = None  # presets and pairs at this size (null: a preset's own; a pair: the student's)
    gpu_dtypes: tuple[str, ...] = ("tf32", "fp16", "bf16")  # extra PyTorch rows (TF32 matmuls, autocast) on CUDA
    # On CUDA, `compile` adds one torch.compile row per dtype here, in this mode ("reduce-overhead" and
    # "max-autotune" capture CUDA graphs); the compile time is reported apart from the latency.
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "reduce-overhead"
    compile_dtypes: tuple[str, ...] = ("fp16", "bf16")
    cpu: bool = True  # time the CPU rows (off: a GPU machine times its CUDA rows only; the CUDA FP32 row is then the baseline)
    onnx: bool = True  # --model presets: also export and time ONNX Runtime FP32/INT8 graphs
    # torchao INT8 (dynamic activations, INT8 weights) and, on CUDA with compute capability >= 8.9, FP8
    # rows: auto when torchao is installed (`pip install .[torchao]`), on: its absence is an error.
    torchao: Literal["auto", "on", "off"] = "auto"
    # OpenVINO rows (FP32, BF16, NNCF INT8, OpenVINO on the symmetric Q/DQ graph) for the artifact and
    # presets: auto when the [openvino] extra is installed, on: its absence is an error.
    openvino: Literal["auto", "on", "off"] = "auto"
    # Runners whose top ops by time are written (profile_<runner>.json, shown in the report): ONNX
    # Runtime's profiler or OpenVINO's performance counters, batch 1, in every model group that has the runner.
    profile: tuple[str, ...] = ()
    parity_images: Annotated[int, Strict(), Field(ge=0)] = 32  # val images for the torchao rows' AP drop (0: none)
    # Grounded-SAM2 as a pair's teacher (`--pair grounded-sam2:student-s`): the frame Grounding DINO sees.
    # The paper's 800x1333, rounded up to the mask stride (4); Swin pads 1333 to 1336 itself, so the
    # cost is the same. SAM2 sees the frame resized to its own image_size (1024 in the published config).
    grounded_input_size: tuple[Count, Count] = (800, 1336)
    # A runner that raises while being timed: false stops bench (the default); true records it under
    # `skipped` with the error and times the others (a one-shot GPU run keeps every other row).
    keep_going: bool = False
    # Main job only: serve the artifact on Triton (loopback, free ports), check parity through it and
    # load-test it. auto: when a Triton install is found; on: a missing install is an error.
    triton: Literal["auto", "on", "off"] = "auto"
    triton_concurrency: tuple[Count, ...] = (1, 4)  # closed-loop load levels
    triton_duration_s: Annotated[float, Strict(), Field(gt=0)] = 5.0  # seconds per level

    @field_validator("torchao", "triton", "openvino", mode="before")
    @classmethod
    def _switch(cls, value: object) -> object:
        # YAML 1.1 reads a bare on/off (as `--set bench.torchao=off` gives) as a boolean
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("batches")
    @classmethod
    def _batches(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("at least one batch size")
        if len(set(value)) != len(value):
            raise ValueError(f"batch sizes repeat: {list(value)}")
        return tuple(sorted(value))

    @field_validator("gpu_dtypes", "compile_dtypes")
    @classmethod
    def _dtypes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [v for v in value if v not in ("fp32", "tf32", "fp16", "bf16")]
        if unknown:
            raise ValueError(f"unknown GPU dtypes {unknown}: use fp32, tf32, fp16 and/or bf16")
        if len(set(value)) != len(value):
            raise ValueError(f"dtypes repeat: {list(value)}")
        return value
