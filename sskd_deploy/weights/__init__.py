"""The weights shipped with the package: the project's foundation stand-ins, pretrained on the
synthetic source world by ``sskd-deploy pretrain --ship`` into ``shipped/`` (its README.md and
provenance.json say how; SHA256SUMS lists every file's hash).

A config names them with the word ``shipped`` (``train.teacher_weights: shipped``,
``train.student_weights: shipped``); :func:`shipped_path` turns that into the file for the role's
preset. Only the tiny presets have shipped weights: the paper's sizes use real DINOv2 / Grounded-SAM2
weights, which cannot be carried in a package.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED = "shipped"
FOLDER = Path(__file__).resolve().parent / "shipped"
# (role, preset) -> file or directory in FOLDER
FILES = {("teacher", "teacher-tiny"): "teacher-tiny.safetensors", ("student", "student-tiny"): "student-tiny-encoder"}
CHECKSUMS = "SHA256SUMS"


def has_shipped(role: str, preset: str) -> bool:
    return (role, preset) in FILES


def shipped_path(role: str, preset: str) -> Path:
    """Where the shipped weights of ``preset`` in ``role`` ("teacher" or "student") are.

    Raises ``ValueError`` for a preset without shipped weights and ``FileNotFoundError`` when the
    installation lacks the file (a broken install).
    """
    if not has_shipped(role, preset):
        offered = ", ".join(f"{p} as {r}" for r, p in FILES)
        raise ValueError(f"no shipped weights for {preset!r} as {role} (shipped: {offered}); set train.{role}_weights "
                         "to a weights path, or null for random initialisation")
    path = FOLDER / FILES[(role, preset)]
    if not path.exists():
        raise FileNotFoundError(f"{path}: shipped weights missing from this installation; reinstall sskd-deploy")
    return path


def describe(value: object) -> str:
    """How a ``train.<role>_weights`` value reads in logs: ``random init``, ``shipped`` or the path."""
    return "random init" if value is None else str(value)
