"""The ``run`` and ``data`` sections and the top-level :class:`Config` that holds every section.

The pydantic models below *are* the embedded default: ``Config()`` is what an empty file (or no
file) means, and ``configs/default.yaml`` spells the same values out with comments. A later stage
adds its settings by writing one :class:`Section` subclass and adding one field to :class:`Config`;
loading, overrides, dumping, hashing and error messages (:mod:`sskd_deploy.config.load`) need no
change. Reading and writing YAML and wording the problems is :mod:`sskd_deploy.config.io`'s job.

Relative paths are kept as written and resolved against the working directory of the command that
uses them (not against the config file's folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from sskd_deploy.config.bench import BenchConfig
from sskd_deploy.config.export import ExportConfig
from sskd_deploy.config.serve import ServeConfig
from sskd_deploy.config.train import TrainConfig
from sskd_deploy.config.types import Count, Fraction, PathField, Section, Seed, Side, SplitFraction

PIPELINE_STEPS = ("train", "export", "bench", "report")


class RunConfig(Section):
    out_dir: PathField = Path("runs/default")
    seed: Seed = 0
    # What the main job does after preparing the data, in this order whatever the order listed.
    steps: tuple[Literal["train", "export", "bench", "report"], ...] = PIPELINE_STEPS


class SynthConfig(Section):
    """The synthetic default world; ``image_size`` is ``(height, width)``."""

    seed: Seed = 0
    num_train: Count = 400
    num_val: Count = 100
    labeled_fraction: Fraction = 0.1
    image_size: tuple[Side, Side] = (192, 256)


class DatasetSpec(Section):
    """A dataset on disk: ``images`` is a COCO file's image folder, ``split`` a Cityscapes split name."""

    kind: Literal["coco", "cityscapes", "folder"]
    path: PathField
    images: Optional[PathField] = None
    split: Optional[str] = None


class SplitConfig(Section):
    """Divide the labeled set into labeled/unlabeled: by a fraction (seeded) or by a split file."""

    labeled_fraction: Optional[SplitFraction] = None
    split_file: Optional[PathField] = None
    seed: Seed = 0

    @model_validator(mode="after")
    def _one_way(self) -> SplitConfig:
        if self.labeled_fraction is not None and self.split_file is not None:
            raise ValueError("give labeled_fraction or split_file, not both")
        return self


def data_rules(present: set[str]) -> list[str]:
    """Problems with which of labeled/unlabeled/val/split are given (by name, not by value); the
    loader also runs them when field errors kept pydantic from doing so."""
    problems = []
    datasets = present & {"labeled", "unlabeled", "val"}
    if datasets and not {"labeled", "val"} <= datasets:
        missing = " and ".join(sorted({"labeled", "val"} - datasets))
        problems.append(
            f"name both labeled and val, or no dataset for the synthetic default (missing {missing})"
        )
    if "split" in present and "labeled" not in present:
        problems.append("split divides data.labeled, which is not given")
    if "split" in present and "unlabeled" in present:
        problems.append("give unlabeled or split, not both (split makes the unlabeled set)")
    return problems


class DataConfig(Section):
    """Either no dataset (the synthetic default under ``root``) or ``labeled`` and ``val``, with
    ``unlabeled`` given or made by ``split``."""

    root: PathField = Path("data/synth")
    synth: SynthConfig = Field(default_factory=SynthConfig)
    labeled: Optional[DatasetSpec] = None
    unlabeled: Optional[DatasetSpec] = None
    val: Optional[DatasetSpec] = None
    split: Optional[SplitConfig] = None

    @model_validator(mode="after")
    def _roles(self) -> DataConfig:
        present = {n for n in ("labeled", "unlabeled", "val", "split") if getattr(self, n) is not None}
        problems = data_rules(present)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Config(Section):
    """The whole run configuration; one field per section."""

    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)
