"""The runners a benchmark times: those of an export artifact, or of a preset with random weights.

Latency does not depend on the weights' values, so a preset that was never trained (student-s
at 512x1024, say) is timed by building it with seeded random weights, exporting it and
quantising it exactly as ``export`` would; the graphs are cached under the work directory by
a hash of the model config, so a second run starts timing at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from sskd_deploy.io import atomic_write_text
from sskd_deploy.runtime.base import Runner


def artifact_runners(artifact_dir: Path, *, threads: int | None) -> dict[str, Runner]:
    """PyTorch eager FP32 from the artifact's checkpoint, then ONNX Runtime for each graph in its manifest."""
    from sskd_deploy.runtime.onnxruntime_runner import OrtRunner
    from sskd_deploy.runtime.torch_runner import TorchRunner

    from sskd_deploy.export.artifact import CHECKPOINT, read_manifest

    manifest = read_manifest(artifact_dir)
    runners: dict[str, Runner] = {
        "torch-fp32": TorchRunner.from_checkpoint(Path(artifact_dir) / CHECKPOINT, threads=threads, name="torch-fp32")
    }
    for name, entry in manifest["files"].items():
        if entry.get("backend") == "onnxruntime":
            key = f"onnxruntime-{entry['precision']}"
            runners[key] = OrtRunner(Path(artifact_dir) / name, threads=threads, name=key)
    return runners


def random_model_runners(
    preset: str,
    work_dir: Path,
    *,
    num_classes: int,
    threads: int | None,
    calibration_images: Sequence[Path],
    input_size: tuple[int, int] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Runner]:
    """Torch eager, ONNX Runtime FP32 and INT8 runners of ``preset`` with seeded random weights."""
    import torch
    from sskd_deploy.export.calibration import select_calibration_images
    from sskd_deploy.export.int8 import quantize_int8
    from sskd_deploy.runtime.onnxruntime_runner import OrtRunner
    from sskd_deploy.runtime.torch_runner import TorchRunner

    from sskd_deploy.export.onnx_export import export_onnx
    from sskd_deploy.model_config import model_preset
    from sskd_deploy.models.deploy import DeployWrapper
    from sskd_deploy.models.maskformer import build_model
    from sskd_deploy.provenance import hash_bytes
    from sskd_deploy.spec import IOSpec

    config = model_preset(preset).with_classes(num_classes)
    if input_size is not None:
        config = config.updated(input_size=input_size)
    torch.manual_seed(0)
    spec = IOSpec.from_model_config(config, [f"class_{i}" for i in range(num_classes)])
    wrapper = DeployWrapper(model=build_model(config).eval(), spec=spec).eval()
    key = hash_bytes(config.model_dump_json().encode())[:16]
    folder = Path(work_dir) / f"{preset}-{key}"
    fp32, int8, done = folder / "model_fp32.onnx", folder / "model_int8.onnx", folder / "complete"
    if not done.is_file():
        log(f"{preset}: exporting random-weight graphs to {folder} (cached for later runs)")
        export_onnx(wrapper, fp32, checkpoint_sha256=f"random-weights-seed-0-{key}")
        selection = select_calibration_images(list(calibration_images), count=8, seed=0, min_images=1)
        quantize_int8(fp32, int8, selection=selection, spec=spec, method="minmax", cache_dir=folder / "calibration",
                      batch_size=1)
        atomic_write_text(done, "ok\n")
    return {
        "torch-fp32": TorchRunner(wrapper=wrapper, threads=threads, name="torch-fp32"),
        "onnxruntime-fp32": OrtRunner(fp32, threads=threads, name="onnxruntime-fp32"),
        "onnxruntime-int8": OrtRunner(int8, threads=threads, name="onnxruntime-int8"),
    }
