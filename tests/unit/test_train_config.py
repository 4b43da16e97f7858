"""The train section: METHOD.md defaults, the encoder lr rule, the baseline's schedule, bad values."""

from __future__ import annotations

import pytest

from sskd_deploy.config import config_from_dict
from sskd_deploy.errors import ConfigError
from sskd_deploy.train_config import TrainConfig


def test_method_defaults() -> None:
    train = TrainConfig()
    assert (train.lambda_pxl, train.lambda_semi, train.pxl.num_negatives) == (0.1, 1.0, 200)
    assert (train.pxl.temperature_start, train.pxl.temperature_end, train.pxl.sampling) == (0.3, 0.07, "fused")
    assert (train.optim.weight_decay, train.pseudo.class_threshold) == (0.05, 0.7)


def test_encoder_lr_multiplier_follows_pretrained_weights(tmp_path) -> None:
    assert TrainConfig().backbone_lr_mult_for("student") == 1.0  # random init: nothing to preserve
    pretrained = TrainConfig(student_weights=tmp_path / "dinov2")
    assert pretrained.backbone_lr_mult_for("student") == 0.1
    assert pretrained.backbone_lr_mult_for("teacher") == 1.0
    explicit = TrainConfig.model_validate({"optim": {"backbone_lr_mult": 0.5}})
    assert explicit.backbone_lr_mult_for("student") == explicit.backbone_lr_mult_for("teacher") == 0.5


def test_supervised_baseline_is_as_long_as_stages_2_and_3() -> None:
    train = TrainConfig()
    schedule = train.supervised_schedule()
    assert schedule.steps == train.student_2.steps + train.student_3.steps
    assert (schedule.batch_size, schedule.lr) == (train.student_2.batch_size, train.student_2.lr)
    chosen = TrainConfig.model_validate({"supervised": {"steps": 7, "batch_size": 1, "lr": 0.1}})
    assert chosen.supervised_schedule().steps == 7


def test_bad_train_values_are_all_reported() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"train": {"stages": ["student_9"], "student": "student-xl", "pxl": {"sampling": "best"},
                                    "student_2": {"steps": 0}}})
    text = str(err.value)
    for needle in ("student_9", "student-xl", "sampling", "steps"):
        assert needle in text
