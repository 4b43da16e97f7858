"""The deploy contract inside an OpenVINO IR: IOSpec, precision and the hash of the graph it came from.

The IR counterpart of :mod:`sskd_deploy.runtime.onnx_metadata`. OpenVINO keeps free-form runtime
information on the model (``model.set_rt_info(value, path)``), serialised into the ``.xml``, so the
contract travels inside the IR as it travels inside the ONNX metadata. Everything lives under one
``sskd_deploy`` section::

    <rt_info><sskd_deploy><iospec value="{...}"/><precision value="int8"/>...</sskd_deploy></rt_info>

This module never imports openvino: it works on any object with OpenVINO's ``Model`` rt_info methods,
so it can be imported (and its constants read) where openvino is absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sskd_deploy.errors import InputError
from sskd_deploy.spec import IOSpec

SECTION = "sskd_deploy"
KEY_SPEC = "iospec"
KEY_SPEC_DIGEST = "iospec_sha256"
KEY_PRECISION = "precision"
KEY_SOURCE = "source_sha256"  # sha256 of the FP32 ONNX graph the IR was made from
KEY_CHECKPOINT = "checkpoint_sha256"


def set_ir_metadata(model: Any, spec: IOSpec, *, precision: str, source_sha256: str,
                    checkpoint_sha256: str = "") -> None:
    """Store the contract in ``model``'s rt_info (in place); saved with the IR by ``openvino.save_model``."""
    entries = {KEY_SPEC: spec.to_json(), KEY_SPEC_DIGEST: spec.digest(), KEY_PRECISION: precision,
               KEY_SOURCE: source_sha256, KEY_CHECKPOINT: checkpoint_sha256}
    for key, value in entries.items():
        model.set_rt_info(value, [SECTION, key])


def get_ir_metadata(model: Any) -> dict[str, str]:
    """Every ``sskd_deploy`` entry present in ``model``'s rt_info, as strings."""
    keys = (KEY_SPEC, KEY_SPEC_DIGEST, KEY_PRECISION, KEY_SOURCE, KEY_CHECKPOINT)
    return {key: model.get_rt_info([SECTION, key]).astype(str) for key in keys if model.has_rt_info([SECTION, key])}


def read_ir_spec(model: Any, source: str | Path) -> IOSpec:
    """The IOSpec stored in an IR, or an InputError naming ``source`` (the ``.xml``)."""
    meta = get_ir_metadata(model)
    if KEY_SPEC not in meta:
        raise InputError(source, f"no IOSpec in the IR's rt_info ({SECTION}/{KEY_SPEC}); "
                                 "make the IR with sskd-deploy (quantize_openvino)")
    return IOSpec.from_json(meta[KEY_SPEC], str(source))
