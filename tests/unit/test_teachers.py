"""The one teacher interface: both teachers satisfy it, ``train.teacher`` picks one, the student is a
trainee of the same fit, one encoder-lr rule serves them all, and the teacher modules stay out of the
pseudo-labeling's import graph (no cycle)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest

from sskd_deploy.config.train import TrainConfig
from sskd_deploy.training.teachers import (
    GroundedSam2StageTeacher,
    MaskFormerStageTeacher,
    MaskFormerTrainee,
    StageTeacher,
    Trainee,
    make_teacher,
)

TRAINING = Path(__file__).resolve().parents[2] / "sskd_deploy" / "training"


@pytest.mark.parametrize("teacher", [MaskFormerStageTeacher(), GroundedSam2StageTeacher()],
                         ids=["maskformer", "grounded-sam2"])
def test_both_teachers_satisfy_the_protocol(teacher) -> None:
    assert isinstance(teacher, StageTeacher) and isinstance(teacher, Trainee)
    assert teacher.role == "teacher"
    # structurally, too: every method of the protocol, with the protocol's parameters
    for name in ("check", "pretrained", "parameter_groups", "pixel_contrast", "step", "validator", "save",
                 "evaluate", "initial", "zero_shot", "labeler", "thresholds"):
        wanted = inspect.signature(getattr(StageTeacher, name)).parameters
        got = inspect.signature(getattr(type(teacher), name)).parameters
        assert list(got) == list(wanted), name
    for name in ("role", "checkpoint", "record", "tag"):
        assert hasattr(teacher, name), name


def test_the_student_is_a_trainee_but_not_a_teacher() -> None:
    student = MaskFormerTrainee("student")
    assert isinstance(student, Trainee) and not isinstance(student, StageTeacher)
    assert (student.role, student.checkpoint, dict(student.record)) == ("student", "model.safetensors", {})


def test_train_teacher_picks_the_implementation() -> None:
    assert type(make_teacher(TrainConfig().teacher)) is MaskFormerStageTeacher
    teacher_l = TrainConfig(teacher="teacher-l", teacher_weights=None)
    assert type(make_teacher(teacher_l.teacher)) is MaskFormerStageTeacher
    grounded = TrainConfig.model_validate({"teacher": "grounded-sam2", "grounded_sam2": {"weights": "w"}})
    teacher = make_teacher(grounded.teacher)
    assert type(teacher) is GroundedSam2StageTeacher
    # what the stages' records and paths keep from before the interface
    assert teacher.checkpoint == "weights" and teacher.tag == " (grounded-sam2)"
    assert dict(teacher.record) == {"teacher": "grounded-sam2"}
    maskformer = MaskFormerStageTeacher()
    assert (maskformer.checkpoint, dict(maskformer.record), maskformer.tag) == ("model.safetensors", {}, "")


def test_one_encoder_lr_rule(tmp_path) -> None:
    student = MaskFormerTrainee("student")
    for train in (TrainConfig(student_weights=None, teacher_weights=None),
                  TrainConfig(student_weights=tmp_path / "dinov2", teacher_weights=None),
                  TrainConfig.model_validate({"optim": {"backbone_lr_mult": 0.5}})):
        ctx = SimpleNamespace(train=train)
        for trainee, role in ((student, "student"), (MaskFormerStageTeacher(), "teacher")):
            rule = train.encoder_lr_mult(pretrained=trainee.pretrained(ctx))
            assert rule == train.backbone_lr_mult_for(role)
    # the foundation-model teacher always starts pretrained: encoder lr x 0.1 unless configured
    grounded = TrainConfig.model_validate({"teacher": "grounded-sam2", "teacher_weights": None,
                                           "grounded_sam2": {"weights": "w"}})
    ctx = SimpleNamespace(train=grounded)
    assert grounded.encoder_lr_mult(pretrained=GroundedSam2StageTeacher().pretrained(ctx)) == 0.1
    explicit = TrainConfig.model_validate({"teacher": "grounded-sam2", "grounded_sam2": {"weights": "w"},
                                           "optim": {"backbone_lr_mult": 0.3}})
    assert explicit.encoder_lr_mult(pretrained=True) == explicit.encoder_lr_mult(pretrained=False) == 0.3


def _imports(module: str) -> set[str]:
    tree = ast.parse((TRAINING / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):  # lazy and type-only imports count too
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_teachers_do_not_import_the_stages_or_the_pseudo_labeling() -> None:
    for module in ("teachers", "grounded"):
        imported = _imports(module)
        assert not imported & {"sskd_deploy.training.pseudo", "sskd_deploy.training.stages"}, module


def test_contrast_head_depends_on_run_seed_and_stage_only() -> None:
    """L_pxl's projection heads start the same in a fresh run, a rerun and every rank (issue: the
    Grounded-SAM2 stage drew them from whatever random state the process had reached)."""
    from types import SimpleNamespace

    import torch

    from sskd_deploy.training.stages import build_contrast

    class Stub:
        def pixel_contrast(self, ctx, model):
            return torch.nn.Linear(4, 3)

    def ctx(seed):
        return SimpleNamespace(config=SimpleNamespace(run=SimpleNamespace(seed=seed)), device=torch.device("cpu"))

    torch.manual_seed(1)
    first = build_contrast(ctx(0), "teacher_1a", Stub(), None).weight
    after = torch.rand(3)
    torch.manual_seed(2)
    again = build_contrast(ctx(0), "teacher_1a", Stub(), None).weight
    assert torch.equal(first, again)
    torch.manual_seed(1)
    build_contrast(ctx(0), "teacher_1a", Stub(), None)
    assert torch.equal(torch.rand(3), after)  # the global stream is untouched
    assert not torch.equal(first, build_contrast(ctx(0), "student_2", Stub(), None).weight)
    assert not torch.equal(first, build_contrast(ctx(1), "teacher_1a", Stub(), None).weight)
