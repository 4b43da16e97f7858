"""Typed, frozen run configuration loaded from YAML, with every problem reported at once.

The pydantic models below *are* the embedded default: ``Config()`` is what an empty file (or no
file) means, and ``configs/default.yaml`` spells the same values out with comments. A later stage
adds its settings by writing one :class:`Section` subclass and adding one field to :class:`Config`;
loading, overrides, dumping, hashing and error messages need no change. Reading and writing YAML
and wording the problems is :mod:`sskd_deploy.config.io`'s job.

Relative paths are kept as written and resolved against the working directory of the command that
uses them (not against the config file's folder).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import Field, ValidationError, model_validator

from sskd_deploy.config.bench import BenchConfig
from sskd_deploy.config.export import ExportConfig
from sskd_deploy.config.io import dump_yaml, read_yaml, show_value, validation_problems
from sskd_deploy.config.serve import ServeConfig
from sskd_deploy.config.train import TrainConfig
from sskd_deploy.config.types import Count, Fraction, PathField, Section, Seed, Side, SplitFraction
from sskd_deploy.errors import ConfigError
from sskd_deploy.io import dumps_json

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


def _data_rules(present: set[str]) -> list[str]:
    """Problems with which of labeled/unlabeled/val/split are given (by name, not by value)."""
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
        problems = _data_rules(present)
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


def _rule_fallback(data: Mapping[str, Any], problems: list[str]) -> list[str]:
    """The data-section rules when field errors kept pydantic from running them, so that one
    report lists everything."""
    section = data.get("data")
    if not isinstance(section, Mapping) or any(p.startswith("data: ") for p in problems):
        return []
    present = {k for k in ("labeled", "unlabeled", "val", "split") if section.get(k) is not None}
    rules = _data_rules(present)
    return [f"data: {'; '.join(rules)}"] if rules else []


def config_from_dict(data: Mapping[str, Any] | None, source: str | Path | None = None) -> Config:
    """Validate a parsed mapping (``None``: all defaults); raise one :class:`ConfigError` naming
    ``source`` with every problem found."""
    if data is None:
        return Config()
    if not isinstance(data, Mapping):
        raise ConfigError(source, [f"top level must be a mapping of sections (got {show_value(data)})"])
    try:
        return Config.model_validate(dict(data))
    except ValidationError as err:
        problems = validation_problems(err, Config)
        raise ConfigError(source, problems + _rule_fallback(data, problems)) from None


def load_config(path: str | Path | None) -> Config:
    """Load and validate a YAML config; ``None`` or an empty file gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    return config_from_dict(read_yaml(path), source=path)


def dump_config(config: Config) -> str:
    """YAML text of ``config`` (paths as strings, tuples as lists) that loads back equal."""
    return dump_yaml(config.model_dump(mode="json"))


def config_hash(config: Config) -> str:
    """sha256 hex of the canonical (sorted-key JSON) form: equal configs hash equal, whatever the file."""
    return hashlib.sha256(dumps_json(config.model_dump(mode="json")).encode("utf-8")).hexdigest()


def _set_dotted(tree: dict[str, Any], keys: list[str], value: Any) -> str | None:
    """Set ``tree[k0][k1]...= value``, creating absent (or null) sections; a problem line or None."""
    node = tree
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            return f"{'.'.join(keys[: depth + 1])}: is a value, not a section (cannot set {'.'.join(keys)})"
        node = child
    node[keys[-1]] = value
    return None


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply ``KEY=VALUE`` overrides (dotted keys, YAML values, e.g. ``data.synth.num_train=50``)
    and validate the result like a file; all problems are reported in one :class:`ConfigError`."""
    if not overrides:
        return config
    tree = config.model_dump(mode="json")
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        keys = key.strip().split(".")
        if not sep or not all(keys):
            problems.append(f"{item!r}: expected KEY=VALUE with a dotted key, e.g. data.synth.num_train=50")
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            problems.append(f"{key.strip()}: value {raw!r} is not valid YAML")
            continue
        problem = _set_dotted(tree, keys, value)
        if problem:
            problems.append(problem)
    if problems:
        raise ConfigError("--set", problems)
    return config_from_dict(tree, source="--set")

