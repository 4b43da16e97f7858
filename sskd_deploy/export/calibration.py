"""Calibration images for INT8: a deterministic, hashed selection and the reader that feeds it.

The images come from the unlabeled split (a folder or an explicit list), go through the one
host-side preprocessing (:func:`sskd_deploy.preprocess.preprocess_batch`) exactly like inference,
and are identified by their content: :func:`calibration_key` hashes the graph, the pixels, the
preprocessing and the method, never a file name, so a cache is reused when nothing that affects
the ranges changed and is never reused when something did (METHOD.md section 7: silently reused
caches are one of the most common INT8 complaints).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from sskd_deploy.data.folder import FOLDER_SUFFIXES, list_images
from sskd_deploy.data.image_io import read_image
from sskd_deploy.errors import InputError
from sskd_deploy.preprocess import preprocess_batch
from sskd_deploy.provenance import hash_file
from sskd_deploy.spec import IOSpec

# Bump whenever sskd_deploy.preprocess changes what the model sees (resize filter, padding,
# placement): every calibration cache made with the old preprocessing becomes a miss.
PREPROCESS_VERSION = "fit-topleft-zero-pad/pil-bilinear/v1"

# Below this the ranges hinge on a handful of images: METHOD.md section 7 quotes yolov8n-seg
# losing 4 mask AP points with 8 calibration images, and TensorRT's guide uses ~500 for
# ImageNet. 32 is the floor at which we stay quiet, not a recommendation; the default is 256.
MIN_CALIBRATION_IMAGES = 32
DEFAULT_CALIBRATION_IMAGES = 256


@dataclass(frozen=True)
class CalibrationImage:
    """One chosen image: where it is, what it holds (sha256 of the file) and its decoded size."""

    rel_path: str
    sha256: str
    path: str
    height: int
    width: int


@dataclass(frozen=True)
class CalibrationSelection:
    """The images calibration runs on, plus what a manifest needs to say about them."""

    root: str
    images: tuple[CalibrationImage, ...]
    available: int  # images found (folder) or listed
    ignored_files: int  # non-image files found in the folder
    requested: int
    seed: int
    warnings: tuple[str, ...] = ()

    def content_digest(self) -> str:
        """One hash over the image contents only, independent of names and of their order."""
        return hashlib.sha256("\n".join(sorted(im.sha256 for im in self.images)).encode()).hexdigest()

    def in_content_order(self) -> list[CalibrationImage]:
        """The images sorted by content hash: histogram calibrators are order-sensitive, and the
        order must not change when a file is renamed if the cache key does not."""
        return sorted(self.images, key=lambda im: im.sha256)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(im.path for im in self.images)

    def to_dict(self) -> dict[str, Any]:
        """The manifest entry: counts, seed, content digest and each image's relative path, hash and size."""
        return {"root": self.root, "available": self.available, "ignored_files": self.ignored_files,
                "requested": self.requested, "seed": self.seed, "count": len(self.images),
                "content_sha256": self.content_digest(), "warnings": list(self.warnings),
                "images": [{k: v for k, v in asdict(im).items() if k != "path"} for im in self.images]}


def _count_other_files(root: Path) -> int:
    """Visible non-image files below ``root`` (same walk rules as :func:`list_images`)."""
    count = 0
    for _folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        count += sum(1 for f in files if not f.startswith(".") and not f.lower().endswith(FOLDER_SUFFIXES))
    return count


def _candidates(source: str | Path | Sequence[str | Path]) -> tuple[Path, list[str], int]:
    """``(root, sorted relative paths, ignored file count)`` for a folder or an explicit list."""
    if isinstance(source, (str, Path)):
        root = Path(source)
        if not root.is_dir():
            raise InputError(root, "calibration folder not found" if not root.exists() else "is not a folder")
        names = list_images(root)
        if not names:
            raise InputError(root, f"no calibration images ({'/'.join(s[1:] for s in FOLDER_SUFFIXES)}) "
                                   "in this folder or below")
        return root, names, _count_other_files(root)
    paths = [Path(p).absolute() for p in source]
    if not paths:
        raise InputError("<calibration images>", "the list of calibration images is empty")
    root = Path(os.path.commonpath([p.parent for p in paths]))
    return root, sorted({p.relative_to(root).as_posix() for p in paths}), 0


def select_calibration_images(source: str | Path | Sequence[str | Path], *, count: int = DEFAULT_CALIBRATION_IMAGES,
                              seed: int = 0, min_images: int = MIN_CALIBRATION_IMAGES) -> CalibrationSelection:
    """Choose up to ``count`` images from a folder (recursive) or a list of image paths.

    Deterministic: candidates are sorted by relative path, then ``count`` are drawn with a seeded
    RNG (all of them when there are fewer). Every chosen image is hashed and fully decoded here,
    so a corrupt file fails now with its name, not minutes into calibration. Fewer than
    ``min_images`` chosen images draw a warning (``warnings.warn`` and ``selection.warnings``).
    """
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    root, names, ignored = _candidates(source)
    chosen = names if len(names) <= count else sorted(random.Random(seed).sample(names, count))
    images = []
    for rel in chosen:
        path = root / rel
        height, width = read_image(path).shape[:2]  # raises InputError naming the file
        images.append(CalibrationImage(rel, hash_file(path), str(path), int(height), int(width)))
    notes = []
    if len(images) < min_images:
        notes.append(f"{root}: only {len(images)} calibration images (of {len(names)} available); "
                     f"fewer than {min_images} make INT8 ranges unreliable")
        warnings.warn(notes[-1], stacklevel=2)
    return CalibrationSelection(str(root), tuple(images), len(names), ignored, count, seed, tuple(notes))


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds ``{input_name: uint8 (B, 3, H, W)}`` batches, preprocessed like inference, to ORT's calibrators.

    Images are decoded batch by batch (never all at once) in content order; ``batches_served``
    lets callers and tests see whether calibration actually ran.
    """

    def __init__(self, selection: CalibrationSelection, spec: IOSpec, *, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.selection, self.spec, self.batch_size = selection, spec, batch_size
        self.batches_served = 0
        self._iter = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        ordered = self.selection.in_content_order()
        for start in range(0, len(ordered), self.batch_size):
            chunk = ordered[start : start + self.batch_size]
            batch, _ = preprocess_batch([read_image(im.path) for im in chunk], self.spec.input_size)
            yield {self.spec.input_name: batch}

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._iter, None)
        self.batches_served += item is not None
        return item

    def rewind(self) -> None:
        self._iter = self._batches()

    def __len__(self) -> int:
        return (len(self.selection.images) + self.batch_size - 1) // self.batch_size


def calibration_key(fp32_graph_sha256: str, selection: CalibrationSelection, input_size: Sequence[int],
                    method: str, method_params: dict[str, Any]) -> str:
    """Content hash naming a calibration cache: graph, pixels, preprocessing and method; never file names."""
    payload = {"graph": fp32_graph_sha256, "images": selection.content_digest(),
               "input_size": [int(v) for v in input_size], "preprocess": PREPROCESS_VERSION,
               "method": method, "params": method_params}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
