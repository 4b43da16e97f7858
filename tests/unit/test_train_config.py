"""The train section: METHOD.md defaults, the encoder lr rule, the baseline's schedule, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from sskd_deploy.config import config_from_dict
from sskd_deploy.config.train import TrainConfig
from sskd_deploy.errors import ConfigError, InputError


def test_method_defaults() -> None:
    train = TrainConfig()
    assert (train.lambda_pxl, train.lambda_semi, train.pxl.num_negatives) == (0.1, 1.0, 200)
    assert (train.pxl.temperature_start, train.pxl.temperature_end, train.pxl.sampling) == (0.3, 0.07, "fused")
    assert (train.optim.weight_decay, train.pseudo.class_threshold) == (0.05, 0.7)


def test_encoder_lr_multiplier_follows_pretrained_weights(tmp_path) -> None:
    random = TrainConfig(student_weights=None, teacher_weights=None)
    assert random.backbone_lr_mult_for("student") == 1.0  # random init: nothing to preserve
    pretrained = TrainConfig(student_weights=tmp_path / "dinov2", teacher_weights=None)
    assert pretrained.backbone_lr_mult_for("student") == 0.1
    assert pretrained.backbone_lr_mult_for("teacher") == 1.0
    assert TrainConfig().backbone_lr_mult_for("teacher") == 0.1  # the shipped teacher is pretrained
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


def test_model_overrides_are_validated_against_the_preset() -> None:
    train = TrainConfig.model_validate({"student_model": {"encoder": {"patch_size": 16},
                                                          "pixel_decoder": {"conv_path": True}}})
    assert train.model_overrides("student") == {"encoder": {"patch_size": 16}, "pixel_decoder": {"conv_path": True}}
    assert train.model_overrides("teacher") == {}
    with pytest.raises(ConfigError) as err:
        config_from_dict({"train": {"student_model": {"encoder": {"patch_size": 1, "widht": 3}},
                                    "teacher_model": {"decoder": {"num_heads": 5}}}})
    text = str(err.value)
    for needle in ("student_model", "patch_size", "widht", "teacher_model", "num_heads"):
        assert needle in text, needle


def test_model_overrides_reach_the_model_config_and_its_checkpoint(tmp_path) -> None:
    from sskd_deploy.data.synth import generate_synthetic
    from sskd_deploy.data.sources import resolve_data
    from sskd_deploy.models.checkpoint import read_checkpoint
    from sskd_deploy.training.context import TrainContext

    generate_synthetic(tmp_path / "data", num_train=4, num_val=2, labeled_fraction=0.5, image_size=(64, 96))
    config = config_from_dict({
        "run": {"out_dir": str(tmp_path / "run")}, "data": {"root": str(tmp_path / "data"),
                                                            "synth": {"num_train": 4, "num_val": 2,
                                                                      "labeled_fraction": 0.5,
                                                                      "image_size": [64, 96]}},
        "train": {"input_size": [64, 96], "student_model": {"decoder": {"num_layers": 2, "query_groups": 2}},
                  "student_weights": "shipped"},
    })
    ctx = TrainContext(config=config, data=resolve_data(config.data), root=tmp_path / "run" / "train",
                       device="cpu")
    # the default whole pretrained student cannot take other decoder settings: a clear error says how to start
    whole = TrainContext(config=config.model_copy(update={"train": config.train.model_copy(
        update={"student_weights": Path("shipped-whole")})}), data=resolve_data(config.data),
        root=tmp_path / "whole" / "train", device="cpu")
    with pytest.raises(InputError, match="decoder.num_layers: checkpoint has 6, config asks for 2.*shipped"):
        whole.initial_weights("student")
    student = ctx.model_config("student")
    assert (student.decoder.num_layers, student.decoder.query_groups) == (2, 2)
    from sskd_deploy.config.model import PRESETS

    assert ctx.model_config("teacher").decoder == PRESETS["teacher-tiny"].decoder  # the teacher preset is untouched
    saved = read_checkpoint(ctx.initial_weights("student")).model_config
    assert saved == student
