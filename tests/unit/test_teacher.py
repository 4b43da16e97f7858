"""The same-family teacher behind the Teacher protocol: freezing, predictions, a loss that trains."""

from __future__ import annotations

import pytest
import torch

from sskd_deploy.config.model import PRESETS
from sskd_deploy.models.criterion import SetCriterion
from sskd_deploy.models.maskformer import build_model
from sskd_deploy.models.teacher import MaskFormerTeacher, Teacher


def _teacher(trainable=None) -> MaskFormerTeacher:
    torch.manual_seed(0)
    config = PRESETS["teacher-tiny"].with_classes(3).updated(input_size=(64, 96))
    return MaskFormerTeacher(model=build_model(config), criterion=SetCriterion(num_classes=3, num_points=None),
                             trainable=trainable)


def _targets() -> list[dict]:
    masks = torch.zeros(2, 64, 96, dtype=torch.bool)
    masks[0, 8:30, 10:40] = True
    masks[1, 30:60, 50:90] = True
    return [{"labels": torch.tensor([0, 2]), "masks": masks}, {"labels": torch.zeros(0, dtype=torch.long),
                                                               "masks": torch.zeros(0, 64, 96, dtype=torch.bool)}]


def test_teacher_satisfies_the_protocol_and_predicts_probabilities() -> None:
    teacher = _teacher()
    assert isinstance(teacher, Teacher)
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    out = teacher.predict_queries(images)
    assert out["class_prob"].shape == (2, 30, 4) and out["mask_prob"].shape == (2, 30, 16, 24)
    torch.testing.assert_close(out["class_prob"].sum(-1), torch.ones(2, 30))
    assert 0 <= out["mask_prob"].min() and out["mask_prob"].max() <= 1
    assert teacher.dense_features(images).shape[:2] == (2, 192)


def test_only_selected_parts_train() -> None:
    teacher = _teacher(trainable=("transformer_decoder",))
    trainable = {id(p) for p in teacher.trainable_parameters()}
    assert trainable == {id(p) for p in teacher.model.parts()["transformer_decoder"].parameters()}
    with pytest.raises(ValueError, match="unknown teacher parts"):
        _teacher(trainable=("heads",))


def test_a_few_steps_lower_the_loss() -> None:
    teacher = _teacher()
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    optimizer = torch.optim.AdamW(teacher.trainable_parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = teacher.loss(images, _targets())["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
