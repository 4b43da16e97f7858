"""Building blocks shared by every config section: the frozen, strict :class:`Section` base and
the annotated field types (strict counts, fractions, paths that tolerate YAML numbers)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict


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
