"""The ``export`` section: which checkpoint, which precisions, how to calibrate, what parity must hold.

AP budgets are in AP points (percent), the unit every table prints; the evaluation code works in
fractions, so the parity gate multiplies by 100 before comparing.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BeforeValidator, Field, Strict

from sskd_deploy.config.types import Count, PathField, Section, Seed

Budget = Annotated[float, Strict(), Field(ge=0)]


def _switch(value: Any) -> Any:
    # YAML 1.1 reads a bare `on`/`off` as a boolean; here it can only have meant the mode.
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


Switch = Annotated[Literal["auto", "off", "on"], BeforeValidator(_switch)]


class CalibrationConfig(Section):
    """INT8 calibration on unlabeled images (METHOD.md section 7)."""

    images: Optional[PathField] = None  # a folder of images; null: the run's unlabeled split
    count: Count = 64  # images used; a seeded, recorded sample when more are available
    min_images: Count = 32  # fewer than this draws a warning: ranges from a handful of images are noisy
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: Annotated[float, Strict(), Field(gt=50, le=100)] = 99.99
    seed: Seed = 0
    batch_size: Count = 8


class BudgetConfig(Section):
    """What the parity gate enforces against PyTorch FP32 on the labeled val split."""

    fp32_ap: Budget = 0.05  # |AP(ONNX FP32) - AP(PyTorch)|, AP points
    fp32_score: Budget = 1e-3  # max |score difference|, same inputs
    fp16_ap: Budget = 1.0  # AP drop of the FP16 graph
    int8_ap: Budget = 1.0  # AP drop of the INT8 graph (--max-ap-drop); drives the mixed-precision search


class ExportConfig(Section):
    checkpoint: Optional[PathField] = None  # null: the latest student of the run (stage 3, else stage 2)
    out_dir: Optional[PathField] = None  # null: <run.out_dir>/export
    opset: Annotated[int, Strict(), Field(ge=17)] = 18
    max_batch: Count = 8  # dynamic batch range 1..max_batch (the TensorRT profile's max)
    int8: bool = True  # --int8/--no-int8
    fp16: bool = True
    mixed_precision: bool = True  # keep the most AP-sensitive blocks in float until budgets.int8_ap holds
    tensorrt: Switch = "auto"  # auto: build engines when TensorRT and a GPU are present
    # OpenVINO: NNCF INT8 IRs in the artifact and OpenVINO rows in the parity gate; auto: when the
    # [openvino] extra is installed
    openvino: Switch = "auto"
    verify: bool = True  # run the parity gate after exporting
    threads: Optional[Count] = None  # ONNX Runtime / torch CPU threads for parity (null: library default)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    budgets: BudgetConfig = Field(default_factory=BudgetConfig)


