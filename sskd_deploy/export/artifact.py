"""One artifact directory per export: checkpoint, ONNX FP32/FP16/INT8, engines, manifest, parity.

``export_artifact`` is a straight-line recipe over the export helpers. Everything is assembled in
``<out>.partial`` and renamed into place only when it is complete (:func:`sskd_deploy.io.atomic_directory`),
so an interrupted or failed export never leaves a directory that looks finished. The manifest
records what went in (checkpoint and calibration-image hashes), what came out (file hashes and
precisions), the tool versions and the parity results; ``verify_artifact`` reruns the gate on a
finished directory using only what the manifest lists.

Paths in the manifest and the parity reports name the final files: a file of the artifact by its
path relative to the artifact directory (``model_int8.onnx``, never the ``.partial`` directory it
was written in), anything outside it (the source checkpoint, calibration images, the calibration
cache) by its absolute path. Moving or renaming the directory therefore leaves every record true.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sskd_deploy.data.records import Dataset
from sskd_deploy.errors import InputError, SSKDError
from sskd_deploy.export_config import ExportConfig
from sskd_deploy.io import atomic_directory, atomic_write_json, atomic_write_text, recorded_path
from sskd_deploy.provenance import environment, hash_file, library_versions

ARTIFACT_FORMAT = "sskd-deploy/artifact"
RUN_FORMAT = "sskd-deploy/run"  # the run manifest (pipeline.run_pipeline), named in refusals
MANIFEST = "manifest.json"
CHECKPOINT = "model.safetensors"
Log = Callable[[str], None]


@dataclass(frozen=True)
class ExportRequest:
    """Everything one export needs, resolved by the caller (the CLI layer knows runs and configs)."""

    checkpoint: Path
    out_dir: Path
    config: ExportConfig
    val: Dataset  # labeled split for parity and the mixed-precision search
    calibration_source: Path | Sequence[Path]  # a folder, or the unlabeled split's image paths
    cache_dir: Path
    recalibrate: bool = False
    overwrite: bool = False


def _file_entry(path: Path, **fields: Any) -> dict[str, Any]:
    return {"sha256": hash_file(path), "bytes": path.stat().st_size, **fields}


def _load_wrapper(checkpoint: Path):
    from sskd_deploy.models.checkpoint import load_model
    from sskd_deploy.models.deploy import DeployWrapper

    model, ckpt = load_model(checkpoint)
    return DeployWrapper(model=model, spec=ckpt.spec).eval(), ckpt


def _torch_reference_ap(req: ExportRequest, wrapper) -> float | None:
    from sskd_deploy.runtime.base import evaluate_with
    from sskd_deploy.runtime.torch_runner import TorchRunner

    result, _ = evaluate_with(TorchRunner(wrapper=wrapper, threads=req.config.threads), req.val,
                              batch_size=req.config.calibration.batch_size)
    return None if result.ap is None else 100.0 * result.ap


def _onnx_ap(req: ExportRequest) -> Callable[[Path], float]:
    """AP (points) of an ONNX graph on the val split through ONNX Runtime: the mixed-precision objective."""
    from sskd_deploy.runtime.base import evaluate_with
    from sskd_deploy.runtime.onnxruntime_runner import OrtRunner

    def evaluate(path: Path) -> float:
        result, _ = evaluate_with(OrtRunner(path, threads=req.config.threads), req.val,
                                  batch_size=req.config.calibration.batch_size)
        return 0.0 if result.ap is None else 100.0 * result.ap

    return evaluate


def _int8(req: ExportRequest, tmp: Path, spec, wrapper, log: Log) -> dict[str, Any]:
    from sskd_deploy.export.calibration import select_calibration_images
    from sskd_deploy.export.int8 import quantize_int8
    from sskd_deploy.export.mixed_precision import ap_budgeted_int8

    cal = req.config.calibration
    selection = select_calibration_images(req.calibration_source, count=cal.count, seed=cal.seed,
                                          min_images=cal.min_images)
    options = dict(selection=selection, spec=spec, method=cal.method, percentile=cal.percentile,
                   cache_dir=req.cache_dir, batch_size=cal.batch_size)
    log(f"INT8: calibrating on {len(selection.paths)} images ({cal.method})")
    quant = quantize_int8(tmp / "model_fp32.onnx", tmp / "model_int8.onnx", recalibrate=req.recalibrate, **options)
    record: dict[str, Any] = {"calibration": selection.to_dict(), "quantization": quant}
    if req.config.mixed_precision:
        reference = _torch_reference_ap(req, wrapper)
        log(f"INT8: AP-budgeted mixed precision against PyTorch AP {reference:.2f} "
            f"(budget {req.config.budgets.int8_ap} AP points)")
        record["mixed_precision"] = ap_budgeted_int8(
            tmp / "model_fp32.onnx", tmp / "model_int8_mixed.onnx", evaluate=_onnx_ap(req),
            reference_ap=reference or 0.0, max_ap_drop=req.config.budgets.int8_ap, full_int8=tmp / "model_int8.onnx",
            log=log, **options,
        )
        if not record["mixed_precision"]["float_blocks"]:  # full INT8 already within budget: no second graph
            (tmp / "model_int8_mixed.onnx").unlink(missing_ok=True)
            record["mixed_precision"]["final_path"] = str(tmp / "model_int8.onnx")  # the graph it equals
    return _int8_paths(record, tmp)


def _int8_paths(record: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """The INT8 record's paths as the finished artifact names them (see the module docstring)."""
    record["calibration"]["root"] = recorded_path(record["calibration"]["root"], tmp)
    quantizations = [record["quantization"]]
    mixed = record.get("mixed_precision")
    if mixed is not None:
        mixed["final_path"] = recorded_path(mixed["final_path"], tmp)
        quantizations.append(mixed["final"])
    for quant in quantizations:
        quant["cache_path"] = recorded_path(quant["cache_path"], tmp)
    return record


def relocate_runner_paths(rows: list[dict[str, Any]], artifact_dir: Path) -> list[dict[str, Any]]:
    """Rewrite the runner ``path`` of report rows (:class:`~sskd_deploy.runtime.base.RunnerInfo`) the
    way the manifest names files: relative to ``artifact_dir`` inside it, else absolute. Empty paths
    and URLs (a Triton server) are left as they are."""
    for row in rows:
        path = row.get("path")
        if path and "://" not in path:
            row["path"] = recorded_path(path, artifact_dir)
    return rows


def _tensorrt(req: ExportRequest, tmp: Path, spec, graphs: dict[str, str], log: Log) -> dict[str, Any]:
    from sskd_deploy.export.tensorrt_build import build_engine, tensorrt_available

    mode = req.config.tensorrt
    available, reason = tensorrt_available()
    if mode == "off" or (mode == "auto" and not available):
        return {"skipped": "disabled (export.tensorrt: off)" if mode == "off" else reason}
    if not available:
        raise SSKDError(f"export.tensorrt is 'on' but TensorRT cannot be used here: {reason}")
    built = {}
    for precision, name in graphs.items():
        engine = tmp / f"model_{precision}.engine"
        log(f"TensorRT: building {engine.name} from {name}")
        built[engine.name] = build_engine(tmp / name, engine, spec=spec, max_batch=req.config.max_batch,
                                          timing_cache=req.cache_dir.parent / "tensorrt.timing_cache")
    return {"built": built}


def export_artifact(req: ExportRequest, *, log: Log = print) -> dict[str, Any]:
    """Export ``req.checkpoint`` into ``req.out_dir``; returns the manifest (with ``parity`` when verified)."""
    from sskd_deploy.export.fp16 import convert_fp16
    from sskd_deploy.export.onnx_export import export_onnx

    start = time.perf_counter()
    wrapper, ckpt = _load_wrapper(req.checkpoint)
    spec, cfg = ckpt.spec, req.config
    with atomic_directory(req.out_dir, overwrite=req.overwrite) as tmp:
        shutil.copyfile(req.checkpoint, tmp / CHECKPOINT)
        files: dict[str, dict[str, Any]] = {CHECKPOINT: _file_entry(tmp / CHECKPOINT, kind="checkpoint")}
        log("ONNX FP32: exporting the deploy wrapper")
        smoke = export_onnx(wrapper, tmp / "model_fp32.onnx", checkpoint_sha256=files[CHECKPOINT]["sha256"],
                            opset=cfg.opset, max_batch=max(cfg.max_batch, 2))
        files["model_fp32.onnx"] = _file_entry(tmp / "model_fp32.onnx", backend="onnxruntime", precision="fp32",
                                               smoke_test=smoke)
        graphs = {"fp32": "model_fp32.onnx"}
        if cfg.fp16:
            log("ONNX FP16: converting, sensitive ops kept in FP32")
            fp16 = convert_fp16(tmp / "model_fp32.onnx", tmp / "model_fp16.onnx")
            files["model_fp16.onnx"] = _file_entry(tmp / "model_fp16.onnx", backend="onnxruntime",
                                                   precision="fp16", conversion=fp16)
            graphs["fp16"] = "model_fp16.onnx"
        manifest: dict[str, Any] = {}
        if cfg.int8:
            manifest["int8"] = _int8(req, tmp, spec, wrapper, log)
            files["model_int8.onnx"] = _file_entry(tmp / "model_int8.onnx", backend="onnxruntime", precision="int8")
            graphs["int8"] = "model_int8.onnx"
            if (tmp / "model_int8_mixed.onnx").is_file():
                files["model_int8_mixed.onnx"] = _file_entry(tmp / "model_int8_mixed.onnx", backend="onnxruntime",
                                                             precision="mixed")
        trt_graphs = {k: v for k, v in graphs.items() if k in ("fp16", "int8")}
        manifest["tensorrt"] = _tensorrt(req, tmp, spec, trt_graphs, log)
        for engine, info in manifest["tensorrt"].get("built", {}).items():
            files[engine] = _file_entry(tmp / engine, backend="tensorrt", precision=engine.split("_")[1].split(".")[0],
                                        build=info)
        manifest.update({
            "format": ARTIFACT_FORMAT, "version": 1, "model": spec.model_name, "iospec": spec.to_dict(),
            "iospec_sha256": spec.digest(), "checkpoint_source": recorded_path(req.checkpoint, tmp), "files": files,
            "export_config": cfg.model_dump(mode="json"), "val_split": {"name": req.val.name,
                                                                        "images": len(req.val.records)},
            "versions": library_versions(), "environment": environment(),
        })
        atomic_write_json(tmp / MANIFEST, manifest, indent=2)
        if cfg.verify:
            manifest["parity"] = verify_artifact(tmp, req.val, config=cfg, log=log)
        manifest["export_seconds"] = round(time.perf_counter() - start, 1)
        atomic_write_json(tmp / MANIFEST, manifest, indent=2)
    return manifest


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    """The artifact manifest of ``artifact_dir``; an InputError naming the artifact meant when given its run."""
    import json

    path = Path(artifact_dir) / MANIFEST
    if not path.is_file():
        hint = " (an interrupted export leaves only a .partial directory)" if Path(artifact_dir).exists() else ""
        meant = _meant(artifact_dir) or f"{hint}; run sskd-deploy export first"
        raise InputError(path, f"no export manifest here{meant}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(path, f"unreadable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        meant = _meant(artifact_dir)
        if not meant and found == RUN_FORMAT:
            meant = "; it is a run directory without an export artifact: run sskd-deploy export first"
        raise InputError(path, f"not an sskd-deploy artifact manifest (format {found!r}){meant}")
    return manifest


def is_artifact_dir(folder: Path) -> bool:
    """Whether ``folder`` holds an export artifact's manifest (checked by its format only)."""
    import json

    try:
        return json.loads((Path(folder) / MANIFEST).read_text()).get("format") == ARTIFACT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _meant(folder: Path) -> str:
    """``"; ... whose export artifact is <run>/export: pass that instead"`` when ``folder`` has an artifact
    below it (a run directory, usually), else ``""``."""
    folder = Path(folder)
    if not folder.is_dir():
        return ""
    below = sorted(p for p in folder.iterdir() if p.is_dir() and is_artifact_dir(p))
    below.sort(key=lambda p: p.name != "export")  # the default place first
    if not below:
        return ""
    return f"; it looks like a run directory, whose export artifact is {below[0]}: pass that instead"


def verified_file(artifact_dir: Path, manifest: dict[str, Any], name: str) -> str:
    """sha256 of the artifact's file ``name``; an InputError when it differs from the manifest's."""
    path = Path(artifact_dir) / name
    digest = hash_file(path)
    if digest != manifest["files"][name]["sha256"]:
        raise InputError(path, "file does not match the manifest's hash (was the directory edited?)")
    return digest


def check_graph_spec(path: Path, spec, manifest: dict[str, Any]) -> None:
    """The IOSpec read from a graph must be the one the artifact was exported with."""
    if spec.digest() != manifest["iospec_sha256"]:
        raise InputError(path, "the IOSpec in this graph differs from the artifact manifest's")


def graph_runners(artifact_dir: Path, manifest: dict[str, Any], threads: int | None) -> tuple[dict, list[dict]]:
    """A runner per compiled graph of the artifact (hash-checked), and the graphs that cannot run here with why."""
    from sskd_deploy.runtime.onnxruntime_runner import OrtRunner

    runners, skipped = {}, []
    for name, entry in manifest["files"].items():
        path = artifact_dir / name
        if entry.get("backend") == "onnxruntime":
            verified_file(artifact_dir, manifest, name)
            runner = OrtRunner(path, threads=threads, name=f"onnxruntime-{entry['precision']}")
            check_graph_spec(path, runner.spec, manifest)
            runners[runner.info.name] = runner
        elif entry.get("backend") == "tensorrt":
            from sskd_deploy.export.tensorrt_build import tensorrt_available

            ok, reason = tensorrt_available()
            if not ok:
                skipped.append({"runner": f"tensorrt-{entry['precision']}", "reason": reason})
                continue
            from sskd_deploy.runtime.tensorrt_runner import TensorRTRunner

            runners[f"tensorrt-{entry['precision']}"] = TensorRTRunner(path, name=f"tensorrt-{entry['precision']}")
    return runners, skipped


def verify_artifact(artifact_dir: Path, val: Dataset, *, config: ExportConfig, log: Log = print,
                    report_name: str = "parity") -> dict[str, Any]:
    """Run the parity gate on an artifact directory; writes ``<report_name>.json`` and ``.md`` into it."""
    from sskd_deploy.export.parity import compare_runners, parity_markdown
    from sskd_deploy.runtime.torch_runner import TorchRunner

    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    checkpoint = artifact_dir / CHECKPOINT
    if hash_file(checkpoint) != manifest["files"][CHECKPOINT]["sha256"]:
        raise InputError(checkpoint, "checkpoint does not match the manifest's hash (was the directory edited?)")
    reference = TorchRunner.from_checkpoint(checkpoint, threads=config.threads, name="torch-fp32")
    others, skipped = graph_runners(artifact_dir, manifest, config.threads)
    log(f"parity: {len(val.records)} images of {val.name!r} through {', '.join(['torch-fp32', *others])}")
    report = compare_runners(reference, others, val, budgets=config.budgets, batch_size=config.calibration.batch_size)
    report["skipped"] = skipped
    relocate_runner_paths(report["rows"], artifact_dir)
    atomic_write_json(artifact_dir / f"{report_name}.json", report, indent=2)
    atomic_write_text(artifact_dir / f"{report_name}.md", parity_markdown(report))
    return report
