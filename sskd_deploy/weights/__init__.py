"""The weights shipped with the package: the project's foundation stand-ins, pretrained on the
synthetic source world by ``sskd-deploy pretrain --ship`` into ``shipped/`` (its README.md and
provenance.json say how; SHA256SUMS lists every file's hash).

A config names them with a keyword: ``shipped`` (``train.teacher_weights: shipped``: the whole
teacher-tiny with its named vocabulary; ``train.student_weights: shipped``: the student-tiny encoder
alone, as DINOv2-S is in the paper) or ``shipped-whole`` (student only: the whole pretrained
student-tiny, its class head sliced to the run's names like the teacher's). :func:`shipped_path`
turns a keyword into the file for the role's preset. Only the tiny presets have shipped weights: the
paper's sizes use real DINOv2 / Grounded-SAM2 weights, which cannot be carried in a package.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED = "shipped"
SHIPPED_WHOLE = "shipped-whole"
KEYWORDS = (SHIPPED, SHIPPED_WHOLE)
FOLDER = Path(__file__).resolve().parent / "shipped"
# (keyword, role, preset) -> file or directory in FOLDER
FILES = {(SHIPPED, "teacher", "teacher-tiny"): "teacher-tiny.safetensors",
         (SHIPPED, "student", "student-tiny"): "student-tiny-encoder",
         (SHIPPED_WHOLE, "student", "student-tiny"): "student-tiny.safetensors"}
CHECKSUMS = "SHA256SUMS"


def is_keyword(value: object) -> bool:
    """Whether a ``train.<role>_weights`` value names shipped weights rather than a path."""
    return value is not None and str(value) in KEYWORDS


def has_shipped(role: str, preset: str, keyword: str = SHIPPED) -> bool:
    return (keyword, role, preset) in FILES


def shipped_path(role: str, preset: str, keyword: str = SHIPPED) -> Path:
    """Where the shipped weights ``keyword`` of ``preset`` in ``role`` ("teacher" or "student") are.

    Raises ``ValueError`` for a preset without such weights and ``FileNotFoundError`` when the
    installation lacks the file (a broken install).
    """
    if not has_shipped(role, preset, keyword):
        offered = ", ".join(f"{k} ({p} as {r})" for k, r, p in FILES)
        raise ValueError(f"no {keyword} weights for {preset!r} as {role} (shipped: {offered}); set train.{role}_weights "
                         "to a weights path, or null for random initialisation")
    path = FOLDER / FILES[(keyword, role, preset)]
    if not path.exists():
        raise FileNotFoundError(f"{path}: shipped weights missing from this installation; reinstall sskd-deploy")
    return path


def describe(value: object) -> str:
    """How a ``train.<role>_weights`` value reads in logs: ``random init``, ``shipped`` or the path."""
    return "random init" if value is None else str(value)
