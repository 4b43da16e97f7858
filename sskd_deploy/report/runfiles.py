"""Reading the pieces of a run directory for the report, each one optional.

A run may stop after any step, so an absent file is normal and reads as ``None``; the section
that wanted it says so on the page. A file that is present but broken is not normal: it would
make the page lie by omission, so it is an :class:`~sskd_deploy.errors.InputError` naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sskd_deploy.config.layout import CONFIG, MANIFEST, RunLayout
from sskd_deploy.errors import InputError
from sskd_deploy.report.html import is_png


@dataclass(frozen=True)
class RunFiles:
    """The run directory ``layout.root`` and its readers; they take the paths ``layout`` gives (the
    export directory may lie outside the run)."""

    layout: RunLayout

    @property
    def root(self) -> Path:
        return self.layout.root

    def placed(self, config: Any | None) -> RunFiles:
        """The same run with the export directory its resolved ``config`` names (``export.out_dir``)."""
        return RunFiles(RunLayout.at(self.root, config))

    def exists(self, path: Path) -> bool:
        return Path(path).is_file()

    def json(self, path: Path) -> dict[str, Any] | None:
        """The JSON object in ``path``; None when absent; InputError when unreadable or not an object."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(path, f"not valid JSON ({err})") from None
        if not isinstance(doc, dict):
            raise InputError(path, f"expected a JSON object, found {type(doc).__name__}")
        return doc

    def png(self, path: Path) -> bytes | None:
        """The bytes of a PNG file, or None when it is absent or not a PNG (nothing else is embedded)."""
        try:
            data = Path(path).read_bytes()
        except OSError:
            return None
        return data if is_png(data) else None


def open_run(run_dir: Path) -> RunFiles:
    """Check that ``run_dir`` looks like a run: a directory with a manifest or a resolved config."""
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    if not run_dir.is_dir():
        raise InputError(run_dir, "no such run directory")
    if not layout.manifest.is_file() and not layout.config_file.is_file():
        raise InputError(run_dir, f"not a run directory: it has neither {MANIFEST} nor {CONFIG} "
                                  "(run `sskd-deploy run`)")
    from sskd_deploy.export.artifact import is_artifact_dir

    if is_artifact_dir(run_dir):
        parent = run_dir.absolute().parent
        raise InputError(run_dir, f"is an export artifact, not a run directory; its run directory is probably "
                                  f"{run_dir.parent if run_dir.parent != Path('.') else parent}: pass that instead")
    return RunFiles(layout)


def objects(doc: dict[str, Any], key: str, *, where: Path) -> list[dict[str, Any]]:
    """``doc[key]`` as a list of JSON objects ([] when absent); InputError naming ``where`` otherwise."""
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise InputError(where, f"'{key}' must be a list of objects")
    return value


def mapping(doc: dict[str, Any], key: str, *, where: Path) -> dict[str, Any]:
    """``doc[key]`` as a JSON object ({} when absent); InputError naming ``where`` otherwise."""
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(where, f"'{key}' must be an object")
    return value


def read_jsonl(path: Path) -> list[dict[str, Any]] | None:
    """One JSON object a line; None when the file is absent or any line is unreadable, because a
    curve drawn from part of a log would look like a finished one."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not records or not all(isinstance(r, dict) for r in records):
        return None
    return records
