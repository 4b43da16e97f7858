"""The deploy contract inside an ONNX file: IOSpec, its digest, checkpoint hash and precision.

Written by the exporter into ``metadata_props`` and read by every ONNX consumer (runners, the
Triton config generator), so none of them needs the checkpoint to know names, shapes and classes.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from sskd_deploy.errors import InputError
from sskd_deploy.spec import IOSpec

META_SPEC = "sskd_deploy.iospec"
META_SPEC_DIGEST = "sskd_deploy.iospec_sha256"
META_CHECKPOINT = "sskd_deploy.checkpoint_sha256"
META_PRECISION = "sskd_deploy.precision"


def set_metadata(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Add or replace ``metadata_props`` entries in place."""
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in sorted(entries.items()):
        model.metadata_props.add(key=key, value=value)


def get_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def contract_metadata(spec: IOSpec, *, checkpoint_sha256: str, precision: str) -> dict[str, str]:
    return {META_SPEC: spec.to_json(), META_SPEC_DIGEST: spec.digest(), META_CHECKPOINT: checkpoint_sha256,
            META_PRECISION: precision}


def load_onnx(path: str | Path, *, load_weights: bool = True) -> onnx.ModelProto:
    """``onnx.load`` with a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "ONNX file not found")
    try:
        return onnx.load(str(path), load_external_data=load_weights)
    except Exception as err:  # protobuf raises DecodeError and friends
        raise InputError(path, f"not a readable ONNX model ({type(err).__name__}: {err})") from None


def read_onnx_spec(path_or_model: str | Path | onnx.ModelProto) -> IOSpec:
    """The IOSpec stored in an exported file's metadata."""
    if isinstance(path_or_model, onnx.ModelProto):
        model, source = path_or_model, "ONNX model"
    else:
        model, source = load_onnx(path_or_model, load_weights=False), str(path_or_model)
    meta = get_metadata(model)
    if META_SPEC not in meta:
        raise InputError(source, f"no IOSpec in the ONNX metadata ({META_SPEC}); export it with sskd-deploy")
    return IOSpec.from_json(meta[META_SPEC], source)


def read_precision(model: onnx.ModelProto) -> str:
    return get_metadata(model).get(META_PRECISION, "fp32")
