"""Atomic file and directory writes.

A reader must never mistake a half-written artifact for a finished one: files are written to a
temporary sibling and renamed into place (``os.replace`` is atomic on POSIX), and directories
are assembled under a ``*.partial`` name that is only renamed once everything inside is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that ``path`` holds either the old or the full new content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, fixed separators, trailing newline."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n"


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = None) -> Path:
    if indent is None:
        text = dumps_json(obj)
    else:
        text = json.dumps(obj, sort_keys=True, indent=indent) + "\n"
    return atomic_write_text(path, text)


@contextlib.contextmanager
def atomic_directory(final: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a scratch directory that becomes ``final`` only if the block finishes.

    On an exception the scratch directory is removed and ``final`` is untouched. With
    ``overwrite`` an existing ``final`` is replaced at the end (never before), so an interrupted
    run leaves the previous complete output in place.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final}: already exists (pass overwrite/--force to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.with_name(final.name + ".partial")
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir()
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if final.exists():
        trash = final.with_name(final.name + ".old")
        if trash.exists():
            shutil.rmtree(trash)
        os.replace(final, trash)
        os.replace(scratch, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(scratch, final)


def recorded_path(path: str | Path, root: str | Path) -> str:
    """How a manifest or report names ``path``: relative to ``root`` (POSIX separators) when the file
    lies inside it, else absolute, so the record stays true wherever ``root`` is moved.

    ``root`` is the directory the record describes (an artifact, say); a path handed in relative to
    the working directory is made absolute first, never kept relative to something a reader cannot know.
    """
    target, base = os.path.abspath(path), os.path.abspath(root)
    if os.path.commonpath([target, base]) != base:
        return target
    return Path(os.path.relpath(target, base)).as_posix()
