"""YAML in and out for the run configuration, and its problems as one line each.

Knows nothing of the config sections themselves (the other :mod:`sskd_deploy.config` modules hold
them): pydantic errors become ``"field.path: what is wrong (got value)"`` lines, with a "did you
mean" suggestion for a misspelt key found in the model passed as ``root``; YAML syntax errors and
keys given twice become one line naming the line and column.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from sskd_deploy.errors import ConfigError, InputError

_KINDS = {
    "int_type": "must be an integer", "float_type": "must be a number", "string_type": "must be a string",
    "bool_type": "must be true or false", "path_type": "must be a path", "tuple_type": "must be a list",
    "model_type": "must be a mapping of keys", "dict_type": "must be a mapping of keys",
}
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def read_yaml(path: Path) -> Any:
    """The parsed content of a YAML file (``None`` when empty); :class:`InputError` when it cannot
    be read, :class:`ConfigError` when it is not valid YAML or gives a key twice."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read config file ({err})") from None
    return parse_yaml(text, path)


def parse_yaml(text: str, source: str | Path) -> Any:
    """Parse YAML ``text``; raise a one-line :class:`ConfigError` naming ``source``, line and column."""
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


class _Dumper(yaml.SafeDumper):
    """Block-style sections, but lists on one line (``image_size: [192, 256]``) as people write them."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def dump_yaml(tree: Mapping[str, Any]) -> str:
    """YAML text of a JSON-like ``tree``, keys in their given order."""
    return yaml.dump(tree, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def show_value(value: Any) -> str:
    """``value`` as the user wrote it in YAML (``null``, ``true``, ``[1, 2]``), cut to 60 characters."""
    if isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        except yaml.YAMLError:  # a Python object handed to config_from_dict
            text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validation_problems(error: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per entry of a pydantic ``error`` raised while validating ``root``."""
    return [_problem(entry, root) for entry in error.errors()]


def _problem(error: Mapping[str, Any], root: type[BaseModel]) -> str:
    """One line for one pydantic error entry: ``<dotted.key>: <what is wrong> (got <value>)``."""
    kind, loc, ctx = error["type"], tuple(error["loc"]), error.get("ctx") or {}
    where = _location(loc)
    if kind == "extra_forbidden":
        section = _section_at(root, loc[:-1])
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
    return f"{where}: {what} (got {show_value(error['input'])})"


def _location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _section_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model at ``loc`` (a tuple of field names) below ``root``, if any."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        model = _section_type(model.model_fields[part].annotation)
    return model


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):  # Optional[...] / Annotated[...]
        found = _section_type(arg)
        if found is not None:
            return found
    return None
