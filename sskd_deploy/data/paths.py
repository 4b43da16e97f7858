"""What reader input may point at, and how readers report what is wrong with it.

Two concerns every reader shares:

* File names written inside annotation files are untrusted. :func:`join_inside` refuses absolute
  names and names that leave the image root once normalised (``os.path.normpath``, no symlink
  resolution, so the answer depends on the text alone and not on what happens to be on disk).
* A reader either stops at the first problem (normal reading) or lists every problem
  (``data check``). Readers take a :data:`Report` callback: :func:`raise_problem` raises
  :class:`DatasetError`, a :class:`ProblemList` collects one line per problem. After calling it a
  reader skips the broken entry, so the same code serves both modes (:func:`read_text` too).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from sskd_deploy.errors import DatasetError

Report = Callable[[str | Path, str], None]


def raise_problem(file: str | Path, problem: str) -> NoReturn:
    """The strict :data:`Report`: raise ``DatasetError(file, problem)``."""
    raise DatasetError(file, problem)


class ProblemList:
    """The collecting :data:`Report`: keeps ``"<file>: <problem>"`` lines, each once, in order."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self._seen: set[str] = set()

    def __call__(self, file: str | Path, problem: str) -> None:
        line = f"{file}: {problem}"
        if line not in self._seen:
            self._seen.add(line)
            self.problems.append(line)

    def __len__(self) -> int:
        return len(self.problems)


def read_text(file: Path, report: Report = raise_problem) -> str | None:
    """The UTF-8 text of ``file``, or ``None`` after telling ``report`` why it cannot be had."""
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        problem = "file not found"
    except (OSError, UnicodeDecodeError) as err:
        problem = f"cannot read as UTF-8 text ({err})"
    report(file, problem)  # outside the except: a raised DatasetError carries no chained traceback
    return None


def unsafe_name_problem(name: str) -> str | None:
    """Why ``name`` may not be used as a path below a dataset root, or ``None`` when it may."""
    if not name or "\x00" in name:
        return "is empty or contains a NUL byte"
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        return "is an absolute path"
    normalised = os.path.normpath(name)
    if normalised == "." or normalised == ".." or normalised.startswith(".." + os.sep):
        return "escapes the dataset root"
    return None


def join_inside(root: Path, name: str) -> Path:
    """Absolute, normalised ``root / name``; call :func:`unsafe_name_problem` first.

    Raises ``ValueError`` for an unsafe name so that forgetting the check cannot open a file
    outside ``root``.
    """
    problem = unsafe_name_problem(name)
    if problem is not None:
        raise ValueError(f"file name {name!r} {problem}")
    return Path(os.path.normpath(os.path.join(os.path.abspath(root), name)))
