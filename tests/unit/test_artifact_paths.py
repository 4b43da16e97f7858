"""Paths recorded by ``export``, ``verify`` and ``bench`` name the final files: a file of the artifact
relative to the artifact directory, never the ``.partial`` directory it was assembled in, anything
else absolute. The proof: export a tiny student from relative paths, move the artifact elsewhere and
verify (and time) the moved copy.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from sskd_deploy.config.bench import BenchConfig
from sskd_deploy.config.export import ExportConfig
from sskd_deploy.data.layout import open_dataset_dir
from sskd_deploy.data.synth import SYNTH_CLASSES, generate_synthetic
from sskd_deploy.export.artifact import ExportRequest, export_artifact, relocate_runner_paths, verify_artifact
from sskd_deploy.io import recorded_path
from tests.unit.test_calibration import write_images

PATH_KEYS = ("path", "root", "cache_path", "final_path", "checkpoint_source")


def test_recorded_path_is_relative_inside_the_root_and_absolute_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "export"
    assert recorded_path(root / "model_int8.onnx", root) == "model_int8.onnx"
    assert recorded_path(root / "sub" / ".." / "graphs" / "a.onnx", root) == "graphs/a.onnx"
    assert recorded_path(tmp_path / "export2" / "a.onnx", root) == str(tmp_path / "export2" / "a.onnx")
    monkeypatch.chdir(tmp_path)
    # relative to the working directory on the way in; relative to the root (or absolute) on the way out
    assert recorded_path("export/parity.json", "export") == "parity.json"
    assert recorded_path("cache/key.json", "export") == str(tmp_path / "cache" / "key.json")


def test_runner_urls_and_empty_paths_are_left_alone(tmp_path: Path) -> None:
    rows = [{"path": str(tmp_path / "model_fp32.onnx")}, {"path": "grpc://localhost:8001/student"}, {"path": ""}, {}]
    relocate_runner_paths(rows, tmp_path)
    assert rows == [{"path": "model_fp32.onnx"}, {"path": "grpc://localhost:8001/student"}, {"path": ""}, {}]


def _recorded(doc: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every ``(json path, value)`` under a key of PATH_KEYS in a manifest or report."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in PATH_KEYS and isinstance(value, str):
                yield f"{where}.{key}", value
            else:
                yield from _recorded(value, f"{where}.{key}")
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _recorded(value, f"{where}[{i}]")


def _student(path: Path) -> Path:
    from sskd_deploy.config.model import model_preset
    from sskd_deploy.models.checkpoint import save_checkpoint
    from sskd_deploy.models.maskformer import build_model
    from sskd_deploy.spec import IOSpec

    config = model_preset("student-tiny").with_classes(len(SYNTH_CLASSES)).updated(input_size=(64, 96))
    torch.manual_seed(0)
    save_checkpoint(path, model=build_model(config), config=config, spec=IOSpec.from_model_config(config, SYNTH_CLASSES))
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, ExportConfig]:
    """(work dir, val split, export config) with ``work/run/export`` exported from paths relative to ``work``."""
    work = tmp_path_factory.mktemp("paths")
    generate_synthetic(work / "ds", seed=0, num_train=2, num_val=3, labeled_fraction=1.0, image_size=(64, 96))
    val = open_dataset_dir(work / "ds")["val"]
    write_images(work / "calib")
    _student(work / "train" / "model.safetensors")
    config = ExportConfig(threads=1, max_batch=2,
                          calibration={"count": 6, "min_images": 4, "batch_size": 2})
    request = ExportRequest(checkpoint=Path("train/model.safetensors"), out_dir=Path("run/export"), config=config,
                            val=val, calibration_source=Path("calib"), cache_dir=Path("run/cache/calibration"))
    before = Path.cwd()
    os.chdir(work)  # the CLI hands relative paths over as the user typed them
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_artifact(request, log=lambda _: None)
    finally:
        os.chdir(before)
    return work, val, config


def _check_paths(artifact: Path, doc: dict[str, Any], outside: Path) -> list[str]:
    """Assert the recorded paths of ``doc`` name real files; returns the artifact-internal ones."""
    inside = []
    for where, value in _recorded(doc):
        assert ".partial" not in value, (where, value)
        if Path(value).is_absolute():
            assert Path(value).is_relative_to(outside) and not Path(value).is_relative_to(artifact), (where, value)
            assert Path(value).exists(), (where, value)
        else:
            assert (artifact / value).is_file(), (where, value)
            inside.append(value)
    return inside


def test_export_records_final_paths(exported) -> None:
    work, _, _ = exported
    artifact = work / "run" / "export"
    assert not artifact.with_name("export.partial").exists()
    manifest_text = (artifact / "manifest.json").read_text()
    parity_text = (artifact / "parity.json").read_text()
    assert ".partial" not in manifest_text and ".partial" not in parity_text
    manifest = json.loads(manifest_text)
    int8 = manifest["int8"]
    # outside the artifact: absolute, although the request named them relative to the working directory
    assert manifest["checkpoint_source"] == str(work / "train" / "model.safetensors")
    assert int8["calibration"]["root"] == str(work / "calib")
    assert Path(int8["quantization"]["cache_path"]).parent == work / "run" / "cache" / "calibration"
    # inside: by name; a mixed-precision search that kept nothing float points at the full INT8 graph
    mixed = int8["mixed_precision"]
    assert mixed["final_path"] == ("model_int8_mixed.onnx" if mixed["float_blocks"] else "model_int8.onnx")
    assert mixed["final_path"] in _check_paths(artifact, manifest, work)
    parity = json.loads(parity_text)
    rows = {row["runner"]: row["path"] for row in parity["rows"]}
    assert rows["torch-fp32"] == "model.safetensors" and rows["onnxruntime-fp32"] == "model_fp32.onnx"
    assert rows["onnxruntime-int8"] == "model_int8.onnx" and rows["onnxruntime-fp16"] == "model_fp16.onnx"
    assert sorted(_check_paths(artifact, parity, work)) == sorted(rows.values())


def test_a_moved_artifact_verifies_and_benches(exported, tmp_path: Path) -> None:
    from sskd_deploy.bench.models import RowOptions, artifact_group
    from sskd_deploy.commands.bench import time_group

    work, val, config = exported
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.copytree(work / "run" / "export", tmp_path / "copy")
    shutil.move(tmp_path / "copy", moved)  # the module's artifact stays for the other tests
    report = verify_artifact(moved, val, config=config, log=lambda _: None)
    assert json.loads((moved / "parity.json").read_text()) == report
    rows = {row["runner"]: row for row in report["rows"]}
    assert {"torch-fp32", "onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8"} <= set(rows)
    assert sorted(_check_paths(moved, report, work)) == sorted(row["path"] for row in rows.values())

    group = artifact_group(moved, RowOptions(threads=1))
    try:
        timed, _ = time_group(group, [_image(val)], BenchConfig(threads=1, iters=1, warmup=0), batches=[1],
                              log=lambda _: None)
    finally:
        group.close()
    paths = {row["runner"]: row["path"] for row in timed}
    assert paths["torch-fp32"] == "model.safetensors" and paths["onnxruntime-int8"] == "model_int8.onnx"
    assert all((moved / path).is_file() for path in paths.values())


def _image(val) -> Any:
    from sskd_deploy.data.image_io import read_image

    return read_image(val.records[0].path)
