"""IOSpec: the contract's shapes, serialisation and validation."""

from __future__ import annotations

import pytest

from sskd_deploy.config.model import PRESETS, model_preset
from sskd_deploy.errors import InputError
from sskd_deploy.spec import IOSpec


def _spec(**kw) -> IOSpec:
    config = PRESETS["student-tiny"].with_classes(3)
    return IOSpec.from_model_config(config.updated(**kw) if kw else config, ["a", "b", "c"])


def test_shapes_follow_the_model_config() -> None:
    spec = _spec(input_size=(96, 128))
    assert spec.input.shape == (-1, 3, 96, 128) and spec.input.dtype == "uint8"
    scores, labels, masks = spec.outputs
    assert scores.shape == (-1, 20) and labels.dtype == "int64"
    assert masks.shape == (-1, 20, 24, 32) and masks.shape_for_batch(2) == (2, 20, 24, 32)


def test_json_round_trip_and_digest() -> None:
    spec = _spec()
    again = IOSpec.from_json(spec.to_json())
    assert again == spec and again.digest() == spec.digest()
    assert _spec(input_size=(96, 128)).digest() != spec.digest()


@pytest.mark.parametrize("text", ['{"format": "other"}', "[1, 2]", "{not json"])
def test_rejects_foreign_or_broken_json(text: str) -> None:
    with pytest.raises(InputError, match="model.onnx"):
        IOSpec.from_json(text, "model.onnx")


def test_class_count_must_match() -> None:
    with pytest.raises(ValueError, match="class names"):
        IOSpec.from_model_config(PRESETS["student-tiny"].with_classes(2), ["a", "b", "c"])


def test_model_config_validation_and_presets() -> None:
    assert set(PRESETS) == {"student-s", "student-tiny", "teacher-l", "teacher-tiny"}
    with pytest.raises(ValueError, match="multiples of 32"):
        PRESETS["student-tiny"].updated(input_size=(100, 128))
    with pytest.raises(ValueError, match="top_k"):
        PRESETS["student-tiny"].updated(top_k=500)
    with pytest.raises(Exception, match="unknown preset"):
        model_preset("student-xl")
