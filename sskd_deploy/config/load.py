"""Loading the run configuration: from a parsed mapping, a YAML file or ``KEY=VALUE`` overrides,
with every problem reported at once in one :class:`~sskd_deploy.errors.ConfigError`; dumping and
hashing it.

Relative paths are kept as written and resolved against the working directory of the command that
uses them (not against the config file's folder).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sskd_deploy.config.io import dump_yaml, read_yaml, show_value, validation_problems
from sskd_deploy.config.run import Config, data_rules
from sskd_deploy.errors import ConfigError
from sskd_deploy.io import dumps_json


def _rule_fallback(data: Mapping[str, Any], problems: list[str]) -> list[str]:
    """The data-section rules when field errors kept pydantic from running them, so that one
    report lists everything."""
    section = data.get("data")
    if not isinstance(section, Mapping) or any(p.startswith("data: ") for p in problems):
        return []
    present = {k for k in ("labeled", "unlabeled", "val", "split") if section.get(k) is not None}
    rules = data_rules(present)
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

