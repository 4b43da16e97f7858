"""What produced an artifact: library versions, machine facts, content hashes.

Every output directory gets a manifest built from these so a result can be traced to its inputs
and tools; caches are keyed by :func:`hash_files` / :func:`hash_bytes`, never by file names.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

TRACKED_DISTRIBUTIONS = (
    "sskd-deploy", "numpy", "pillow", "pycocotools", "torch", "transformers", "onnx", "onnxruntime",
    "tensorrt", "tritonclient",
)


def library_versions(names: Iterable[str] = TRACKED_DISTRIBUTIONS) -> dict[str, str]:
    """Installed version of each distribution (``"absent"`` when it is not installed)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Machine facts worth recording next to any measured number."""
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_files(paths: Iterable[str | Path], root: str | Path | None = None) -> str:
    """One hash over the names (relative to ``root``) and contents of ``paths``, order-independent."""
    digest = hashlib.sha256()
    base = Path(root) if root is not None else None
    entries = []
    for p in paths:
        p = Path(p)
        name = str(p.relative_to(base)) if base is not None else str(p)
        entries.append((name, hash_file(p)))
    for name, h in sorted(entries):
        digest.update(f"{name}\0{h}\n".encode())
    return digest.hexdigest()
