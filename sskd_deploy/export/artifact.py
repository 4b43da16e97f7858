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

from sskd_deploy.config import layout as run_layout
from sskd_deploy.config.export import ExportConfig
from sskd_deploy.data.records import Dataset
from sskd_deploy.errors import InputError, SSKDError
from sskd_deploy.io import atomic_directory, atomic_write_json, atomic_write_text, recorded_path
from sskd_deploy.provenance import environment, hash_file, library_versions

ARTIFACT_FORMAT = "sskd-deploy/artifact"
RUN_FORMAT = "sskd-deploy/run"  # the run manifest (commands.run.run_pipeline), named in refusals
MANIFEST = run_layout.MANIFEST
CHECKPOINT = run_layout.CHECKPOINT
FP32_GRAPH = run_layout.FP32_GRAPH
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


INT8_GRAPHS = {"cpu": "model_int8.onnx", "tensorrt": "model_int8_tensorrt.onnx"}
MIXED_GRAPHS = {"cpu": "model_int8_mixed.onnx", "tensorrt": "model_int8_tensorrt_mixed.onnx"}
OPENVINO_GRAPHS = {"int8": "model_openvino_int8.xml", "mixed": "model_openvino_mixed.xml"}


def _int8(req: ExportRequest, tmp: Path, spec, wrapper, log: Log) -> dict[str, Any]:
    """Both INT8 graphs from one calibration (``cpu``: ONNX Runtime on x86, ``tensorrt``: TensorRT's rules),
    the AP-budgeted mixed-precision search on the CPU graph (the one ONNX Runtime serves), its float
    blocks applied to the TensorRT graph, and OpenVINO's NNCF INT8 (``export.openvino``)."""
    from sskd_deploy.export.calibration import select_calibration_images
    from sskd_deploy.export.int8 import quantize_int8
    from sskd_deploy.export.mixed_precision import ap_budgeted_int8
    from sskd_deploy.runtime.onnxruntime_runner import runtime_census

    cal = req.config.calibration
    selection = select_calibration_images(req.calibration_source, count=cal.count, seed=cal.seed,
                                          min_images=cal.min_images)
    options = dict(selection=selection, spec=spec, method=cal.method, percentile=cal.percentile,
                   cache_dir=req.cache_dir, batch_size=cal.batch_size)
    fp32 = tmp / FP32_GRAPH
    log(f"INT8: calibrating on {len(selection.paths)} images ({cal.method})")
    record: dict[str, Any] = {"calibration": selection.to_dict(), "graphs": {}}
    for target, name in INT8_GRAPHS.items():
        quant = quantize_int8(fp32, tmp / name, recalibrate=req.recalibrate and target == "cpu", target=target,
                              **options)
        quant["runtime_census"] = runtime_census(tmp / name, threads=req.config.threads)
        record["graphs"][name] = quant
        log(f"INT8 {target} graph {name}: {census_line(quant)}")
    record["quantization"] = record["graphs"][INT8_GRAPHS["cpu"]]
    excluded: list[str] = []
    if req.config.mixed_precision:
        reference = _torch_reference_ap(req, wrapper)
        log(f"INT8: AP-budgeted mixed precision against PyTorch AP {reference:.2f} "
            f"(budget {req.config.budgets.int8_ap} AP points)")
        mixed = ap_budgeted_int8(fp32, tmp / MIXED_GRAPHS["cpu"], evaluate=_onnx_ap(req), reference_ap=reference or 0.0,
                                 max_ap_drop=req.config.budgets.int8_ap, full_int8=tmp / INT8_GRAPHS["cpu"], log=log,
                                 target="cpu", **options)
        record["mixed_precision"] = mixed
        excluded = list(mixed["final"]["excluded_nodes"])
        if not mixed["float_blocks"]:  # full INT8 already within budget: no second graph
            (tmp / MIXED_GRAPHS["cpu"]).unlink(missing_ok=True)
            mixed["final_path"] = str(tmp / INT8_GRAPHS["cpu"])  # the graph it equals
        else:
            name = MIXED_GRAPHS["tensorrt"]
            log(f"INT8: the same {len(mixed['float_blocks'])} float blocks in the TensorRT graph ({name})")
            record["graphs"][name] = quantize_int8(fp32, tmp / name, exclude_nodes=excluded, target="tensorrt",
                                                   **options)
    record["openvino"] = _openvino_int8(req, tmp, excluded, options, log)
    return _int8_paths(record, tmp)


def census_line(quant: dict[str, Any]) -> str:
    """One line of a quantization record's node census: what is quantized in the graph and what ORT runs in integer."""
    ops = quant["census"]["ops"]
    graph = ", ".join(f"{op} {v['quantized']}/{v['quantized'] + v['float']}" for op, v in ops.items())
    runtime = quant.get("runtime_census")
    ran = "" if runtime is None else (
        f"; ONNX Runtime runs {sum(runtime['integer'].values())} integer and {sum(runtime['float'].values())} "
        f"float compute kernels ({100 * runtime['integer_fraction']:.0f}% integer)")
    return (f"quantized {graph}; {quant['census']['quantize_linear']} Q / {quant['census']['dequantize_linear']} DQ"
            f"{ran}")


def _openvino_int8(req: ExportRequest, tmp: Path, excluded: list[str], options: dict[str, Any],
                   log: Log) -> dict[str, Any]:
    """NNCF INT8 IRs for OpenVINO (full, and with the mixed-precision search's float nodes), or why not."""
    state = _openvino_state(req.config)
    if "skipped" in state:
        return state
    from sskd_deploy.export.openvino_int8 import quantize_openvino

    record: dict[str, Any] = {}
    for precision, nodes in (("int8", []), ("mixed", excluded)):
        if precision == "mixed" and not nodes:
            continue
        name = OPENVINO_GRAPHS[precision]
        log(f"OpenVINO: NNCF {precision} -> {name}")
        record[name] = quantize_openvino(tmp / FP32_GRAPH, tmp / name, selection=options["selection"],
                                         spec=options["spec"], cache_dir=options["cache_dir"],
                                         recalibrate=req.recalibrate, exclude_nodes=nodes)
    return {"built": record}


def _openvino_state(cfg: ExportConfig) -> dict[str, Any]:
    """``{"version": ...}`` when the artifact includes the OpenVINO path, else ``{"skipped": why}``."""
    reason = "disabled (export.openvino: off)" if cfg.openvino == "off" else openvino_missing()
    if reason and cfg.openvino == "on":
        raise SSKDError(f"export.openvino is 'on' but OpenVINO cannot be used here: {reason}")
    if reason:
        return {"skipped": reason}
    from importlib.metadata import version

    return {"version": version("openvino"), "nncf": version("nncf")}


def openvino_missing() -> str | None:
    """Why the OpenVINO path cannot run here (the ``[openvino]`` extra is not installed), or None."""
    import importlib.util

    missing = [m for m in ("openvino", "nncf") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not installed (pip install 'sskd-deploy[openvino]')" if missing else None


def _int8_paths(record: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """The INT8 record's paths as the finished artifact names them (see the module docstring)."""
    record["calibration"]["root"] = recorded_path(record["calibration"]["root"], tmp)
    quantizations = list(record["graphs"].values()) + list(record["openvino"].get("built", {}).values())
    mixed = record.get("mixed_precision")
    if mixed is not None:
        mixed["final_path"] = recorded_path(mixed["final_path"], tmp)
        quantizations.append(mixed["final"])
    for quant in {id(q): q for q in quantizations}.values():
        quant["cache_path"] = recorded_path(quant["cache_path"], tmp)
    return record


def _int8_files(tmp: Path, record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Manifest entries of the INT8 graphs written, each saying which runtime and target it is for."""
    files = {}
    for name, quant in record["graphs"].items():
        target = quant["target"]
        files[name] = _file_entry(tmp / name, backend="onnxruntime", precision=quant["precision"], target=target)
    for name, quant in record["openvino"].get("built", {}).items():
        files[name] = _file_entry(tmp / name, backend="openvino", precision=quant["precision"], target="openvino",
                                  weights=Path(name).with_suffix(".bin").name)
        files[Path(name).with_suffix(".bin").name] = _file_entry(tmp / Path(name).with_suffix(".bin"),
                                                                 kind="openvino-weights", of=name)
    if (tmp / MIXED_GRAPHS["cpu"]).is_file():
        files[MIXED_GRAPHS["cpu"]] = _file_entry(tmp / MIXED_GRAPHS["cpu"], backend="onnxruntime", precision="mixed",
                                                 target="cpu")
    return files


def graphs_by_target(files: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Which file each runtime takes per precision: ``{"cpu": {"int8": "model_int8.onnx", ...}, "tensorrt":
    {"int8": "model_int8_tensorrt.onnx", ...}, "openvino": {...}, "any": {"fp32": ..., "fp16": ...}}``
    (``any``: the float graphs every ONNX runtime reads; TensorRT's engines are built from its graphs)."""
    targets: dict[str, dict[str, str]] = {}
    for name, entry in files.items():
        if entry.get("backend") in ("onnxruntime", "openvino"):
            targets.setdefault(entry.get("target", "any"), {})[entry["precision"]] = name
    return targets


def _by_target(files: dict[str, dict[str, Any]], target: str) -> dict[str, str]:
    """``{file name: precision}`` of the graphs made for ``target``."""
    return {name: entry["precision"] for name, entry in files.items() if entry.get("target") == target}


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
    openvino = _openvino_state(req.config)  # an 'on' that cannot be honoured fails before any work
    wrapper, ckpt = _load_wrapper(req.checkpoint)
    spec, cfg = ckpt.spec, req.config
    with atomic_directory(req.out_dir, overwrite=req.overwrite) as tmp:
        shutil.copyfile(req.checkpoint, tmp / CHECKPOINT)
        files: dict[str, dict[str, Any]] = {CHECKPOINT: _file_entry(tmp / CHECKPOINT, kind="checkpoint")}
        log("ONNX FP32: exporting the deploy wrapper")
        smoke = export_onnx(wrapper, tmp / FP32_GRAPH, checkpoint_sha256=files[CHECKPOINT]["sha256"],
                            opset=cfg.opset, max_batch=max(cfg.max_batch, 2))
        files[FP32_GRAPH] = _file_entry(tmp / FP32_GRAPH, backend="onnxruntime", precision="fp32",
                                               smoke_test=smoke)
        graphs = {"fp32": FP32_GRAPH}
        if cfg.fp16:
            log("ONNX FP16: converting, sensitive ops kept in FP32")
            fp16 = convert_fp16(tmp / FP32_GRAPH, tmp / "model_fp16.onnx")
            files["model_fp16.onnx"] = _file_entry(tmp / "model_fp16.onnx", backend="onnxruntime",
                                                   precision="fp16", conversion=fp16)
            graphs["fp16"] = "model_fp16.onnx"
        manifest: dict[str, Any] = {}
        trt_graphs = {k: v for k, v in graphs.items() if k == "fp16"}
        if cfg.int8:
            manifest["int8"] = _int8(req, tmp, spec, wrapper, log)
            files.update(_int8_files(tmp, manifest["int8"]))
            trt_graphs.update({precision: name for name, precision in _by_target(files, "tensorrt").items()})
        manifest["tensorrt"] = _tensorrt(req, tmp, spec, trt_graphs, log)
        for engine, info in manifest["tensorrt"].get("built", {}).items():
            files[engine] = _file_entry(tmp / engine, backend="tensorrt", precision=engine.split("_")[1].split(".")[0],
                                        build=info)
        manifest["openvino"] = openvino
        manifest["targets"] = graphs_by_target(files)
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
    """``"; ... whose export artifact is <run>/export: pass that instead"`` when ``folder`` is a run directory
    with an artifact where its recorded config puts it (``export.out_dir``, else ``<run>/export``) or has one
    below it, else ``""``."""
    folder = Path(folder)
    if not folder.is_dir():
        return ""
    placed = run_layout.RunLayout.recorded(folder).export_dir
    below = sorted(p for p in folder.iterdir() if p.is_dir() and is_artifact_dir(p))
    below.sort(key=lambda p: p.name != run_layout.EXPORT)  # the default place first
    found = ([placed] if is_artifact_dir(placed) else []) + [p for p in below if p != placed]
    if not found:
        return ""
    return f"; it looks like a run directory, whose export artifact is {found[0]}: pass that instead"


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


def runner_name(backend: str, entry: dict[str, Any]) -> str:
    """``onnxruntime-int8`` for the graph ONNX Runtime serves, ``onnxruntime-int8-tensorrt`` for TensorRT's
    graph run by ONNX Runtime (its rounding, checked before an engine is built), ``openvino-int8`` ..."""
    suffix = "-tensorrt" if backend == "onnxruntime" and entry.get("target") == "tensorrt" else ""
    return f"{backend}-{entry['precision']}{suffix}"


def graph_runners(artifact_dir: Path, manifest: dict[str, Any], threads: int | None, *,
                  bench_extras: bool = False) -> tuple[dict, list[dict]]:
    """A runner per compiled graph of the artifact (hash-checked), and the graphs that cannot run here with why.

    With OpenVINO in the artifact, OpenVINO also runs the FP32 graph (``openvino-fp32``) and TensorRT's
    symmetric Q/DQ graph (``openvino-int8-qdq``: OpenVINO executes Q/DQ in integer, and it is its fastest
    INT8 form here); ``bench_extras`` adds what only the benchmark times: OpenVINO's BF16 on the FP32 graph."""
    from sskd_deploy.runtime.onnxruntime_runner import OrtRunner

    runners, skipped = {}, []
    for name, entry in manifest["files"].items():
        path = artifact_dir / name
        backend = entry.get("backend")
        if backend == "onnxruntime":
            verified_file(artifact_dir, manifest, name)
            runner = OrtRunner(path, threads=threads, name=runner_name(backend, entry))
            check_graph_spec(path, runner.spec, manifest)
            runners[runner.info.name] = runner
        elif backend == "openvino":
            if not _openvino_runnable(skipped, runner_name(backend, entry)):
                continue
            verified_file(artifact_dir, manifest, name)
            verified_file(artifact_dir, manifest, entry["weights"])
            runners.update(_openvino_runner(path, manifest, threads, runner_name(backend, entry), skipped))
        elif backend == "tensorrt":
            from sskd_deploy.export.tensorrt_build import tensorrt_available

            ok, reason = tensorrt_available()
            if not ok:
                skipped.append({"runner": f"tensorrt-{entry['precision']}", "reason": reason})
                continue
            from sskd_deploy.runtime.tensorrt_runner import TensorRTRunner

            runners[f"tensorrt-{entry['precision']}"] = TensorRTRunner(path, name=f"tensorrt-{entry['precision']}")
    if "version" in manifest.get("openvino", {}):
        extras = {"openvino-fp32": (FP32_GRAPH, "f32"), "openvino-int8-qdq": (INT8_GRAPHS["tensorrt"], "f32")}
        if bench_extras:
            extras["openvino-bf16"] = (FP32_GRAPH, "bf16")
        for runner, (name, hint) in extras.items():
            if name in manifest["files"] and _openvino_runnable(skipped, runner):
                runners.update(_openvino_runner(artifact_dir / name, manifest, threads, runner, skipped, hint=hint))
    return runners, skipped


def _openvino_runnable(skipped: list[dict], runner: str) -> bool:
    reason = openvino_missing()
    if reason:
        skipped.append({"runner": runner, "reason": reason})
    return reason is None


def _openvino_runner(path: Path, manifest: dict[str, Any], threads: int | None, name: str, skipped: list[dict],
                     hint: str = "f32") -> dict[str, Any]:
    """``{name: runner}``, or ``{}`` with the reason in ``skipped`` when OpenVINO's CPU plugin cannot compile
    the graph (seen: OpenVINO 2026.4 rejects the symmetric Q/DQ graph of a trained student-tiny with
    "DequantizationMultiply contains empty child edge"; the random-weight graph of the same model compiles)."""
    from sskd_deploy.runtime.openvino_runner import OpenVINORunner

    try:
        runner = OpenVINORunner(path, threads=threads, name=name, precision=hint)
    except RuntimeError as err:  # the plugin's own errors; a missing file or contract is an InputError
        first = next((line for line in str(err).splitlines()[::-1] if line.strip()), type(err).__name__)
        skipped.append({"runner": name, "reason": f"OpenVINO cannot compile {path.name}: {first.strip()}"})
        return {}
    check_graph_spec(path, runner.spec, manifest)
    return {name: runner}


def verify_artifact(artifact_dir: Path, val: Dataset, *, config: ExportConfig, log: Log = print,
                    report_name: str = run_layout.PARITY) -> dict[str, Any]:
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
