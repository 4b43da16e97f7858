"""Typed, frozen run configuration loaded from YAML, with every problem reported at once.

The pydantic models below *are* the embedded default: ``Config()`` is what an empty file (or no
file) means, and ``configs/default.yaml`` spells the same values out with comments. A later stage
adds its settings by writing one :class:`Section` subclass and adding one field to :class:`Config`;
loading, overrides, dumping, hashing and error messages need no change.

Relative paths are kept as written and resolved against the working directory of the command that
uses them (not against the config file's folder).
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, model_validator

from sskd_deploy.errors import ConfigError, InputError
from sskd_deploy.io import dumps_json


def _number_to_text(value: Any) -> Any:
    # YAML reads `out_dir: 2024` as an int; as a path it can only have meant the text.
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# Strict numbers: YAML already types them, so "5" or `true` where a count belongs is a mistake.
Seed = Annotated[int, Strict(), Field(ge=0)]
Count = Annotated[int, Strict(), Field(ge=1)]
Side = Annotated[int, Strict(), Field(ge=64)]
Fraction = Annotated[float, Strict(), Field(gt=0, le=1)]
SplitFraction = Annotated[float, Strict(), Field(gt=0, lt=1)]
PathField = Annotated[Path, BeforeValidator(_number_to_text)]


class Section(BaseModel):
    """Base of every config section: immutable, and unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)


class RunConfig(Section):
    out_dir: PathField = Path("runs/default")
    seed: Seed = 0


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


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):  # Optional[...] / Annotated[...]
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section model at ``loc`` (a tuple of field names) below :class:`Config`, if any."""
    model: type[BaseModel] | None = Config
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        model = _section_type(model.model_fields[part].annotation)
    return model


def _location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _show(value: Any) -> str:
    if isinstance(value, str):
        text = repr(value)
    else:
        try:  # as the user wrote it in YAML: null, true, [1, 2]
            text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        except yaml.YAMLError:  # a Python object handed to config_from_dict
            text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_KINDS = {
    "int_type": "must be an integer", "float_type": "must be a number", "string_type": "must be a string",
    "bool_type": "must be true or false", "path_type": "must be a path", "tuple_type": "must be a list",
    "model_type": "must be a mapping of keys", "dict_type": "must be a mapping of keys",
}
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _problem(error: Mapping[str, Any]) -> str:
    """One line for one pydantic error entry: ``<dotted.key>: <what is wrong> (got <value>)``."""
    kind, loc, ctx = error["type"], tuple(error["loc"]), error.get("ctx") or {}
    where = _location(loc)
    if kind == "extra_forbidden":
        section = _section_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), list(section.model_fields) if section else [], n=1)
        return f"{where}: unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind == "missing":
        return f"{where}: " + ("missing item" if isinstance(loc[-1], int) else "required key missing")
    if kind == "value_error":  # our own cross-field rules: the message is already the whole story
        return f"{where}: {error['msg'].removeprefix('Value error, ')}"
    if kind in _BOUNDS:
        bound = next(v for k, v in ctx.items() if k in ("ge", "gt", "le", "lt"))
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        what = f"must be {_BOUNDS[kind]} {bound}"
    elif kind == "literal_error":
        what = f"must be one of {ctx['expected']}"
    elif kind == "too_long":
        what = f"must have at most {ctx['max_length']} items"
    elif kind == "too_short":
        what = f"must have at least {ctx['min_length']} items"
    else:
        what = _KINDS.get(kind, error["msg"][:1].lower() + error["msg"][1:])
    return f"{where}: {what} (got {_show(error['input'])})"


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
        raise ConfigError(source, [f"top level must be a mapping of sections (got {_show(data)})"])
    try:
        return Config.model_validate(dict(data))
    except ValidationError as err:
        problems = [_problem(e) for e in err.errors()]
        raise ConfigError(source, problems + _rule_fallback(data, problems)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML loader that rejects a key given twice (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str | Path) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and start is not None:  # where the unfinished construct began is often the real mistake
            problem += f" ({context} started at line {start.line + 1}, column {start.column + 1})"
        raise ConfigError(source, [f"invalid YAML{where}: {problem}"]) from None


def load_config(path: str | Path | None) -> Config:
    """Load and validate a YAML config; ``None`` or an empty file gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read config file ({err})") from None
    return config_from_dict(_parse_yaml(text, path), source=path)


class _Dumper(yaml.SafeDumper):
    """Block-style sections, but lists on one line (``image_size: [192, 256]``) as people write them."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def dump_config(config: Config) -> str:
    """YAML text of ``config`` (paths as strings, tuples as lists) that loads back equal."""
    tree = config.model_dump(mode="json")
    return yaml.dump(tree, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


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
