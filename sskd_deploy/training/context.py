"""What every stage recipe shares: the config, the data by role, where outputs go, the device,
and the small helpers that build models, samples and loss modules the same way for every stage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sskd_deploy.config import Config
from sskd_deploy.config.layout import COMPLETE, TrainLayout
from sskd_deploy.config.model import ModelConfig, model_preset
from sskd_deploy.data.records import Dataset
from sskd_deploy.data.sources import DataSources
from sskd_deploy.errors import InputError, SSKDError
from sskd_deploy.io import atomic_write_json
from sskd_deploy.models.checkpoint import config_differences, load_model, read_checkpoint, save_checkpoint
from sskd_deploy.models.criterion import LossWeights, SetCriterion
from sskd_deploy.models.maskformer import build_model
from sskd_deploy.models.matcher import HungarianMatcher
from sskd_deploy.models.vocabulary import is_model_checkpoint, new_names, restrict_to_names
from sskd_deploy.spec import IOSpec
from sskd_deploy.training.data import PairedSet, SegmentationSamples

def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class TrainContext:
    config: Config
    data: DataSources
    root: Path  # <run>/train
    device: torch.device
    console: Any = None
    rank: int = 0
    world_size: int = 1
    _whole: dict = field(default_factory=dict, repr=False)  # role -> whole-model checkpoint path or None

    @property
    def train(self):
        return self.config.train

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.data.labeled.categories.names)

    def log(self, message: str) -> None:
        if self.console is not None and self.is_main:
            self.console.print(message)

    def model_config(self, role: str) -> ModelConfig:
        """The student or teacher preset with the run's overrides (``train.<role>_model``), sized for the
        data's classes and the run's input size."""
        name = self.train.student if role == "student" else self.train.teacher
        weights = None if self.whole_model(role) is not None else self.train.weights_path(role)
        config = model_preset(name).updated(**self.train.model_overrides(role)).with_classes(len(self.class_names))
        changes: dict[str, Any] = {"encoder": {"weights": None if weights is None else str(weights)}}
        if self.train.input_size is not None:
            changes["input_size"] = tuple(self.train.input_size)
        return config.updated(**changes)

    def spec(self, config: ModelConfig) -> IOSpec:
        return IOSpec.from_model_config(config, self.class_names)

    @property
    def layout(self) -> TrainLayout:
        return TrainLayout(self.root)

    def stage_dir(self, stage: str) -> Path:
        return self.layout.stage_dir(stage)

    def whole_model(self, role: str) -> Path | None:
        """The role's starting weights when they are a whole sskd-deploy model (e.g. the shipped teacher),
        else None (encoder weights or random initialisation)."""
        if role not in self._whole:
            path = self.train.weights_path(role)
            self._whole[role] = path if path is not None and is_model_checkpoint(path) else None
        return self._whole[role]

    def initial_weights(self, role: str) -> Path:
        """theta_0 of a role, written once (seeded) so stage 1b can re-initialise to exactly it.

        From a whole pretrained model, theta_0 is that model with its class heads sliced to the data's
        class names (zero-shot by name); otherwise a fresh model, with pretrained encoder weights if given.
        """
        path = self.layout.init_weights(role)
        if not path.is_file():
            config = self.model_config(role)
            torch.manual_seed(self.config.run.seed + (0 if role == "student" else 1))
            model = build_model(config)
            source = self.whole_model(role)
            extra = {}
            if source is not None:
                state, fresh = self._named_start(role, source, config, model.state_dict())
                model.load_state_dict(state)
                extra = {"initialised_from": str(source), **({"new_class_rows": fresh} if fresh else {})}
            if self.is_main:
                save_checkpoint(path, model=model, config=config, spec=self.spec(config), extra=extra)
        return path

    def _named_start(self, role: str, source: Path, config: ModelConfig, initial: dict) -> tuple[dict, list[str]]:
        """The whole model at ``source`` restricted to the data's class names, checked against ``config``,
        and the names its vocabulary lacks. The teacher must know every name (its zero-shot use); the
        student, which learns its classes anyway, starts those names' class rows from ``initial``."""
        checkpoint = read_checkpoint(source)
        sliced = checkpoint.model_config.with_classes(len(self.class_names))
        # the input size does not change the weights (position embeddings are interpolated per input)
        differences = config_differences(sliced.updated(input_size=config.input_size), config)
        if differences:
            raise InputError(source, f"this pretrained {role} does not match train.{role} and train.{role}_model: "
                             + "; ".join(differences[:5]) + f"; to change the model, start train.{role}_weights from "
                             "encoder weights (`shipped` for student-tiny) or from random weights (null)")
        fresh = new_names(checkpoint, self.class_names) if role == "student" else []
        _, state = restrict_to_names(checkpoint, self.class_names, source, fresh=initial if role == "student" else None)
        return state, fresh

    def load(self, checkpoint: Path, role: str) -> torch.nn.Module:
        model, _ = load_model(checkpoint, expect=self.model_config(role))
        return model.to(self.device)

    def samples(self, dataset: Dataset, salt: int, *, ground_truth: bool = True, strong: bool = True
                ) -> SegmentationSamples:
        augment = self.train.augment
        return SegmentationSamples(
            dataset=dataset, input_size=tuple(self.model_config("student").input_size),
            seed=self.config.run.seed * 7919 + salt, scale_range=augment.scale_range, hflip_prob=augment.hflip_prob,
            ground_truth=ground_truth, strong=strong, copy_paste=augment.copy_paste,
        )

    def paired(self, pseudo: Dataset, salt: int, *, strong: bool = True) -> PairedSet:
        return PairedSet(
            labeled=self.samples(self.data.labeled, salt, strong=strong),
            unlabeled=self.samples(pseudo, salt + 1, ground_truth=False, strong=strong), seed=self.config.run.seed,
        )

    def criterion(self) -> SetCriterion:
        t = self.train
        matcher = HungarianMatcher(num_points=t.num_points, class_cost=t.class_cost)
        return SetCriterion(num_classes=len(self.class_names), matcher=matcher, num_points=t.num_points,
                            weights=LossWeights(semantic_weight=t.semantic_weight, semantic_loss=t.semantic_loss))


def read_complete(stage_dir: Path) -> dict | None:
    """The stage's completion record, or ``None`` when the stage has not finished."""
    marker = stage_dir / COMPLETE
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def mark_complete(stage_dir: Path, record: dict) -> None:
    """Written last: a stage directory without it is never taken as finished."""
    atomic_write_json(stage_dir / COMPLETE, record, indent=2)


def require_stage(ctx: TrainContext, stage: str, needed_by: str) -> Path:
    record = read_complete(ctx.stage_dir(stage))
    if record is None:
        raise SSKDError(f"stage {needed_by} needs the output of stage {stage}, which has not completed: run it first")
    return ctx.stage_dir(stage) / record["checkpoint"]
