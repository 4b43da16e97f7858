"""One tiny deploy graph for the quantization tests (ONNX Runtime INT8, OpenVINO/NNCF): a random-weight
student-tiny exported to ONNX, with a small calibration selection beside it."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from tests.unit.test_calibration import write_images


def export_tiny_student(work: Path, input_size: tuple[int, int] = (64, 96)) -> tuple[Path, Any, Any, Path]:
    """``(fp32 path, spec, calibration selection, work)`` for student-tiny (3 classes, seed 0) at ``input_size``."""
    import torch

    from sskd_deploy.config.model import model_preset
    from sskd_deploy.export.calibration import select_calibration_images
    from sskd_deploy.export.onnx_export import export_onnx
    from sskd_deploy.models.deploy import DeployWrapper
    from sskd_deploy.models.maskformer import build_model
    from sskd_deploy.spec import IOSpec

    torch.manual_seed(0)
    cfg = model_preset("student-tiny").with_classes(3).updated(input_size=input_size)
    spec = IOSpec.from_model_config(cfg, ["a", "b", "c"])
    wrapper = DeployWrapper(model=build_model(cfg).eval(), spec=spec).eval()
    export_onnx(wrapper, work / "fp32.onnx", checkpoint_sha256="0" * 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 6 images < 32: the warning is tested in test_calibration
        selection = select_calibration_images(write_images(work / "images"), count=16)
    return work / "fp32.onnx", spec, selection, work
