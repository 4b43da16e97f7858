"""Per-image instance sets and the RLE conversions every other module uses.

Masks travel as boolean arrays ``(N, H, W)`` inside the process and as COCO compressed RLE
(``{"size": [H, W], "counts": str}``) on disk and over the wire. pycocotools does the encoding,
so our RLE is byte-compatible with every COCO tool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

RLE = dict[str, Any]


def masks_to_rles(masks: np.ndarray) -> list[RLE]:
    """Encode boolean masks ``(N, H, W)`` as compressed RLEs with ``counts`` as ``str``."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in encoded:
        rle["counts"] = rle["counts"].decode("ascii")
    return list(encoded)


def _as_pycoco(rle: RLE) -> RLE:
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        h, w = rle["size"]
        return mask_utils.frPyObjects(rle, h, w)
    if isinstance(counts, str):
        return {"size": list(rle["size"]), "counts": counts.encode("ascii")}
    return rle


def rles_to_masks(rles: list[RLE], height: int, width: int) -> np.ndarray:
    """Decode RLEs (compressed or uncompressed) to a boolean array ``(N, height, width)``."""
    if not rles:
        return np.zeros((0, height, width), dtype=bool)
    decoded = mask_utils.decode([_as_pycoco(r) for r in rles])
    if decoded.ndim == 2:
        decoded = decoded[:, :, None]
    return decoded.transpose(2, 0, 1).astype(bool)


def rle_area(rle: RLE) -> float:
    return float(mask_utils.area(_as_pycoco(rle)))


def rle_bbox(rle: RLE) -> list[float]:
    """``[x, y, w, h]`` of the mask's bounding box (zeros for an empty mask)."""
    return [float(v) for v in mask_utils.toBbox(_as_pycoco(rle))]


def compress_rle(rle: RLE) -> RLE:
    """Return ``rle`` as compressed RLE with string counts (accepts any COCO RLE form)."""
    encoded = _as_pycoco(rle)
    counts = encoded["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(encoded["size"][0]), int(encoded["size"][1])], "counts": counts}


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight ``[x0, y0, x1, y1]`` boxes (exclusive max) of boolean masks ``(N, H, W)``; empty -> 0."""
    n = masks.shape[0]
    boxes = np.zeros((n, 4), dtype=np.float32)
    if n == 0:
        return boxes
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    for i in range(n):
        ys = np.flatnonzero(rows[i])
        xs = np.flatnonzero(cols[i])
        if ys.size:
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


@dataclass(frozen=True)
class Instances:
    """The instances of one image.

    Attributes:
        image_size: ``(height, width)`` of the image the masks belong to.
        masks: bool ``(N, H, W)``.
        labels: int64 ``(N,)``, contiguous class indices ``0..C-1``.
        scores: float32 ``(N,)``; ones for ground truth.
        iscrowd: bool ``(N,)``; crowd regions are ignored by evaluation and matching.
    """

    image_size: tuple[int, int]
    masks: np.ndarray
    labels: np.ndarray
    scores: np.ndarray = field(default=None)  # type: ignore[assignment]
    iscrowd: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        h, w = self.image_size
        masks = np.asarray(self.masks, dtype=bool).reshape(-1, h, w)
        n = masks.shape[0]
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        scores = np.ones(n, np.float32) if self.scores is None else np.asarray(self.scores, np.float32)
        iscrowd = np.zeros(n, bool) if self.iscrowd is None else np.asarray(self.iscrowd, bool)
        for name, arr in (("labels", labels), ("scores", scores.reshape(-1)), ("iscrowd", iscrowd)):
            if arr.shape[0] != n:
                raise ValueError(f"Instances.{name} has {arr.shape[0]} entries for {n} masks")
        object.__setattr__(self, "image_size", (int(h), int(w)))
        object.__setattr__(self, "masks", masks)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "scores", scores.reshape(-1))
        object.__setattr__(self, "iscrowd", iscrowd)

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> Instances:
        h, w = image_size
        return cls(image_size, np.zeros((0, h, w), bool), np.zeros(0, np.int64))

    def subset(self, index: np.ndarray | slice | list[int]) -> Instances:
        return Instances(
            self.image_size, self.masks[index], self.labels[index], self.scores[index], self.iscrowd[index]
        )

    def boxes(self) -> np.ndarray:
        return mask_boxes(self.masks)

    def to_rles(self) -> list[RLE]:
        return masks_to_rles(self.masks)

    @classmethod
    def from_rles(
        cls,
        rles: list[RLE],
        labels: np.ndarray | list[int],
        image_size: tuple[int, int],
        scores: np.ndarray | list[float] | None = None,
        iscrowd: np.ndarray | list[bool] | None = None,
    ) -> Instances:
        h, w = image_size
        return cls((h, w), rles_to_masks(rles, h, w), np.asarray(labels), scores, iscrowd)
