"""INT8 for OpenVINO: NNCF post-training quantization of the FP32 deploy graph into an OpenVINO IR.

The ONNX Q/DQ graph of :mod:`sskd_deploy.export.int8` also runs in OpenVINO, but NNCF knows the
CPU plugin's int8 fusion rules (which activations to quantize so that int8 tensors flow from one
layer to the next) and writes weights as int8 constants. The calibration images are the same
hashed selection, preprocessed exactly like inference by :class:`ImageCalibrationReader`.

Settings:

- ``preset``: ``performance`` (symmetric activations and weights) or ``mixed`` (asymmetric
  activations). Weights are per-channel symmetric in both.
- The deploy wrapper's selection tail (ONNX node names starting with ``/select/``: softmax,
  top-k, gathers) is always kept in float, plus ``exclude_nodes`` (ONNX node names, which the
  OpenVINO ONNX frontend keeps as friendly names; the mixed-precision search passes these).
- ``model_type``: ``default`` or ``transformer`` (NNCF's ``ModelType.TRANSFORMER``: SmoothQuant, and
  element-wise ops, normalisations and attention inputs left float). Measured on random-weight
  student-tiny (192x256, 6 calibration images, 2 threads, batch 1, vs the FP32 graph in OpenVINO on 6
  other images): default 12.8 ms, max |score diff| 0.012, matched mask-logit error 56 % of the mean
  |logit|, mask sign agreement 0.85; transformer 15.8 ms (+23 %), 0.015, 16 %, 0.95. For reference,
  FP32 21.6 ms and the ONNX Runtime S8 Q/DQ graph in OpenVINO 11.0 ms, 0.021, 25 %, 0.92. On student-s
  (512x1024) default ran 1180 ms and transformer 1340 ms. On a *trained* student-tiny (19.35 val AP
  in PyTorch, 64 calibration images) the AP settles it: default **0.63** AP (a collapse: it
  quantizes the element-wise and normalisation inputs too), ``preset=mixed`` 14.11, transformer
  **19.53**. So ``transformer`` is the default value; ``default`` stays selectable for speed
  experiments, behind the parity gate.

The quantized IR is the cached thing: ``cache_dir/<calibration_key>.xml`` + ``.bin``, keyed by the
graph's content, the images' content, preprocessing and every setting above plus the NNCF and
OpenVINO versions. A hit copies the IR and never runs NNCF. Files are written under temporary
names and renamed into place, the ``.bin`` before the ``.xml``, and a stale ``.xml`` is removed
first: an ``.xml`` that exists always has its complete ``.bin``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from sskd_deploy.errors import InputError
from sskd_deploy.export.calibration import CalibrationSelection, ImageCalibrationReader, calibration_key
from sskd_deploy.export.int8 import TAIL_PREFIX
from sskd_deploy.provenance import hash_file
from sskd_deploy.runtime.onnx_metadata import META_CHECKPOINT, get_metadata, load_onnx, read_onnx_spec
from sskd_deploy.runtime.openvino_metadata import SECTION, set_ir_metadata
from sskd_deploy.spec import IOSpec

METHOD = "nncf"
PRESETS = ("performance", "mixed")
MODEL_TYPES = ("default", "transformer")
# Ops whose second input is a weight when it comes from a constant; what the census counts.
WEIGHTED_OPS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")
# Ops a weight passes through between its constant and the op (NNCF's int8 weights are
# Constant(i8) -> Convert -> Multiply(scale); an uncompressed one has a FakeQuantize instead).
_WEIGHT_PATH_OPS = ("Convert", "Multiply", "Subtract", "Reshape", "Transpose", "Unsqueeze", "Squeeze",
                    "FakeQuantize", "FakeConvert")
_INT_TYPES = ("i8", "u8", "i4", "u4")


class _CalibrationBatches:
    """The reader as the re-iterable data source ``nncf.Dataset`` takes (NNCF may pass over it twice).

    ``batch_size`` is what NNCF reads to decide whether its statistics are collected per batch.
    """

    def __init__(self, reader: ImageCalibrationReader) -> None:
        self.reader = reader
        self.batch_size = reader.batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.reader.rewind()
        while (item := self.reader.get_next()) is not None:
            yield item

    def __len__(self) -> int:
        return len(self.reader)


def _settings(preset: str, model_type: str, subset: int, batch_size: int, excluded: Collection[str]) -> dict[str, Any]:
    """Everything besides graph and images that changes the quantized IR (part of the cache key)."""
    import nncf
    import openvino as ov

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; choose one of {MODEL_TYPES}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return {"nncf": nncf.__version__, "openvino": ov.get_version(), "preset": preset, "model_type": model_type,
            "subset_size": subset, "batch_size": batch_size, "target_device": "CPU",
            "float_nodes": sorted(excluded), "float_patterns": [_tail_pattern()]}


def _tail_pattern() -> str:
    return re.escape(TAIL_PREFIX) + ".*"


def _run_nncf(fp32_path: Path, reader: ImageCalibrationReader, params: dict[str, Any]) -> Any:
    """Read the ONNX graph into OpenVINO and quantize it; returns the quantized ov.Model."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32_path))
    names = {op.get_friendly_name() for op in model.get_ops()}
    unknown = sorted(set(params["float_nodes"]) - names)
    if unknown:
        raise ValueError(f"exclude_nodes not in the graph: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    # validate=False: the names were checked above, and the tail pattern must not fail a graph without a tail
    ignored = nncf.IgnoredScope(names=params["float_nodes"], patterns=params["float_patterns"], validate=False)
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)  # NNCF logs one INFO line per node it leaves alone
    try:
        return nncf.quantize(
            model, nncf.Dataset(_CalibrationBatches(reader)),
            preset=nncf.QuantizationPreset(params["preset"]), target_device=nncf.TargetDevice.CPU,
            subset_size=math.ceil(params["subset_size"] / params["batch_size"]),
            model_type=nncf.ModelType.TRANSFORMER if params["model_type"] == "transformer" else None,
            ignored_scope=ignored)
    finally:
        logger.setLevel(level)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _publish(tmp_xml: Path, final_xml: Path) -> None:
    """Rename a finished IR pair into place: stale .xml away first, then the .bin, the .xml last."""
    for path in (tmp_xml, tmp_xml.with_suffix(".bin")):
        _fsync(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(final_xml)  # an old .xml must never pair with the new .bin
    os.replace(tmp_xml.with_suffix(".bin"), final_xml.with_suffix(".bin"))
    os.replace(tmp_xml, final_xml)


@contextlib.contextmanager
def _temporary_ir(final_xml: Path) -> Iterator[Path]:
    """A temporary ``.xml`` name beside ``final_xml`` (same file system: renames are atomic); removed on failure."""
    final_xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = final_xml.with_name(f".{final_xml.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.xml")
    try:
        yield tmp
    finally:
        for path in (tmp, tmp.with_suffix(".bin")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def save_ir_atomically(model: Any, final_xml: Path) -> None:
    """``openvino.save_model`` without float16 weight compression (nothing is downgraded silently)."""
    import openvino as ov

    with _temporary_ir(final_xml) as tmp:
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        _publish(tmp, final_xml)


def copy_ir_atomically(src_xml: Path, final_xml: Path) -> None:
    with _temporary_ir(final_xml) as tmp:
        shutil.copyfile(src_xml.with_suffix(".bin"), tmp.with_suffix(".bin"))
        shutil.copyfile(src_xml, tmp)
        _publish(tmp, final_xml)


def _weight_kind(op: Any) -> str:
    """``quantized`` / ``float`` for a weight from a constant, ``activations`` when input 1 is computed."""
    node, seen_fq = op.input_value(1).get_node(), False
    while node.get_type_name() in _WEIGHT_PATH_OPS:
        seen_fq |= node.get_type_name() == "FakeQuantize"
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Constant":
        return "activations"
    element = node.get_output_element_type(0).get_type_name()
    return "quantized" if seen_fq or element in _INT_TYPES else "float"


def ir_census(model: Any) -> dict[str, Any]:
    """FakeQuantize count, and per weighted op type how many have quantized / float weights (or none).

    ``{"fake_quantize": 398, "weights": {"Convolution": {"quantized": 45, "float": 0, "activations": 0}, ...}}``
    """
    weights = {t: Counter({"quantized": 0, "float": 0, "activations": 0}) for t in WEIGHTED_OPS}
    fake_quantize = 0
    for op in model.get_ops():
        kind = op.get_type_name()
        fake_quantize += kind == "FakeQuantize"
        if kind in weights:
            weights[kind][_weight_kind(op)] += 1
    return {"fake_quantize": fake_quantize,
            "weights": {t: dict(c) for t, c in weights.items() if sum(c.values())}}


def _quantize_into_cache(fp32_path: Path, selection: CalibrationSelection, spec: IOSpec, params: dict[str, Any],
                         metadata: dict[str, str], cache: Path, batch_size: int) -> int:
    """Run NNCF, store the contract in the IR, write it to ``cache``; returns calibration batches run."""
    reader = ImageCalibrationReader(selection, spec, batch_size=batch_size)
    model = _run_nncf(fp32_path, reader, params)
    rt = model.get_rt_info()
    if "framework" in rt:  # the ONNX metadata copied by the frontend (precision "fp32"); restated below
        del rt["framework"]
    set_ir_metadata(model, spec, **metadata)
    model.set_rt_info(json.dumps(params, sort_keys=True), [SECTION, "quantization"])
    save_ir_atomically(model, cache)
    return reader.batches_served


def quantize_openvino(fp32_path: str | Path, out_xml: str | Path, *, selection: CalibrationSelection, spec: IOSpec,
                      cache_dir: str | Path, recalibrate: bool = False, exclude_nodes: Collection[str] = (),
                      preset: str = "performance", subset_size: int | None = None, batch_size: int = 1,
                      model_type: str = "transformer") -> dict[str, Any]:
    """Quantize the FP32 ONNX graph at ``fp32_path`` with NNCF into the IR ``out_xml`` (+ ``.bin``).

    ``subset_size``: calibration images used (the first ones in content order; default all of the
    selection). ``exclude_nodes``: ONNX node names kept in float (precision ``mixed``).
    ``recalibrate`` ignores and overwrites a cached IR. Returns the manifest entry: precision,
    method, params, calibration_key, cache_path, cache_hit, calibration_images, calibration_batches
    (0 on a hit), excluded_nodes, nncf / openvino versions, the IR's census (:func:`ir_census`), wall_s.
    """
    start = time.perf_counter()
    fp32_path, out_xml, cache_dir = Path(fp32_path), Path(out_xml), Path(cache_dir)
    if out_xml.suffix != ".xml":
        raise ValueError(f"{out_xml}: an OpenVINO IR is written as .xml (+ .bin)")
    fp32 = load_onnx(fp32_path, load_weights=False)  # InputError naming the file if missing or corrupt
    try:
        graph_spec = read_onnx_spec(fp32)
    except InputError as err:
        raise InputError(fp32_path, err.problem) from None
    if graph_spec.digest() != spec.digest():
        raise InputError(fp32_path, "the IOSpec in this graph's metadata differs from the one given")
    if subset_size is not None and subset_size < 1:
        raise ValueError(f"subset_size must be positive, got {subset_size}")
    subset = min(subset_size or len(selection.images), len(selection.images))
    selection = dataclasses.replace(selection, images=tuple(selection.in_content_order()[:subset]))
    params = _settings(preset, model_type, subset, batch_size, exclude_nodes)
    graph_sha = hash_file(fp32_path)
    key = calibration_key(graph_sha, selection, spec.input_size, METHOD, params)
    cache = cache_dir / f"{key}.xml"
    hit = cache.is_file() and cache.with_suffix(".bin").is_file() and not recalibrate
    precision = "mixed" if exclude_nodes else "int8"
    batches = 0
    if not hit:
        metadata = {"precision": precision, "source_sha256": graph_sha,
                    "checkpoint_sha256": get_metadata(fp32).get(META_CHECKPOINT, "")}
        batches = _quantize_into_cache(fp32_path, selection, spec, params, metadata, cache, batch_size)
    copy_ir_atomically(cache, out_xml)

    import openvino as ov

    census = ir_census(ov.Core().read_model(str(out_xml)))
    return {"precision": precision, "method": METHOD, "params": params, "calibration_key": key,
            "cache_path": str(cache), "cache_hit": hit, "calibration_images": subset,
            "calibration_batches": batches, "excluded_nodes": sorted(exclude_nodes), "source_sha256": graph_sha,
            "nncf": params["nncf"], "openvino": params["openvino"], "census": census,
            "wall_s": round(time.perf_counter() - start, 3)}
