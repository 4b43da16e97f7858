"""Exceptions the CLI turns into one-line messages and a non-zero exit code.

Every error that a user can cause by handing us bad input derives from :class:`SSKDError`
and names the file (or config field) and the problem, so the message alone says what to fix.
"""

from __future__ import annotations

from pathlib import Path


class SSKDError(Exception):
    """Base class for errors caused by user input; the CLI prints them without a traceback."""

    exit_code = 2


class InputError(SSKDError):
    """A file the user pointed us at is missing, unreadable or malformed.

    ``str(err)`` is ``"<path>: <problem>"``.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DatasetError(InputError):
    """A dataset (annotation file, image, layout) breaks the format it claims to follow."""


class ConfigError(SSKDError):
    """A configuration file has unknown keys or invalid values; lists every problem at once."""

    def __init__(self, path: str | Path | None, problems: list[str]) -> None:
        self.path = None if path is None else str(path)
        self.problems = list(problems)
        where = self.path or "config"
        if len(self.problems) == 1:
            message = f"{where}: {self.problems[0]}"
        else:
            message = f"{where}: {len(self.problems)} problems\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(message)
