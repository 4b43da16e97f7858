"""COCO segmentations checked before pycocotools sees them, then turned into compressed RLE.

pycocotools' C decoder trusts what it is given: a forged RLE makes it read or write past its
buffers, and a merely wrong one silently gives wrong areas and IoUs. So every segmentation read
from a file (dataset annotations, prediction results) goes through :func:`segmentation_problem`
or :func:`segmentation_to_rle` first. The three COCO forms are accepted:

* polygons: a list of flat ``[x0, y0, x1, y1, ...]`` lists of finite numbers, at least 3 points
  each, every point inside the image up to :data:`POLYGON_TOLERANCE` pixels (annotation tools round);
* uncompressed RLE: ``{"size": [h, w], "counts": [int, ...]}`` with non-negative runs;
* compressed RLE: ``{"size": [h, w], "counts": str}`` in COCO's string encoding, decoded here.

Either RLE form must have ``size == [height, width]`` and runs that cover exactly ``h * w`` pixels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from sskd_deploy.structures import RLE, compress_rle

POLYGON_TOLERANCE = 1.0
# 7 characters hold 35 bits, more than any uint32 run (or run difference) needs.
_MAX_CHARS_PER_NUMBER = 7


def segmentation_problem(segmentation: Any, height: int, width: int) -> str | None:
    """What is wrong with a COCO ``segmentation`` of a ``height`` x ``width`` image, or ``None``."""
    if isinstance(segmentation, list):
        return _polygons_problem(segmentation, height, width)
    if isinstance(segmentation, dict):
        return _rle_problem(segmentation, height, width)
    return f"segmentation must be a polygon list or an RLE object, found a {type(segmentation).__name__}"


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> RLE:
    """The checked ``segmentation`` as a new compressed RLE with ``str`` counts.

    Raises ``ValueError`` with the one-line :func:`segmentation_problem` when it is malformed.
    """
    problem = segmentation_problem(segmentation, height, width)
    if problem is not None:
        raise ValueError(problem)
    if isinstance(segmentation, list):
        return polygons_to_rle(segmentation, height, width)
    return compress_rle(segmentation)


def polygons_to_rle(polygons: list[list[float]], height: int, width: int) -> RLE:
    """Union of COCO polygons as a compressed RLE with ``str`` counts (pycocotools rasterisation).

    Trusts ``polygons``: check them with :func:`segmentation_problem` first when they come from a file.
    """
    parts = mask_utils.frPyObjects([[float(v) for v in p] for p in polygons], height, width)
    merged = mask_utils.merge(parts)
    return {"size": [height, width], "counts": merged["counts"].decode("ascii")}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _polygons_problem(polygons: list, height: int, width: int) -> str | None:
    if not polygons:
        return "segmentation is an empty polygon list"
    low, high_x, high_y = -POLYGON_TOLERANCE, width + POLYGON_TOLERANCE, height + POLYGON_TOLERANCE
    for j, poly in enumerate(polygons):
        if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
            return f"polygon {j} is not a flat list of finite numbers"
        if len(poly) < 6 or len(poly) % 2:
            return f"polygon {j} has {len(poly)} coordinates, expected an even number >= 6"
        xs, ys = poly[0::2], poly[1::2]
        if min(xs) < low or min(ys) < low or max(xs) > high_x or max(ys) > high_y:
            return f"polygon {j} has points outside the image (width {width}, height {height})"
    return None


def _rle_problem(rle: dict, height: int, width: int) -> str | None:
    missing = [repr(key) for key in ("size", "counts") if key not in rle]
    if missing:
        return f"segmentation must be an RLE object with 'size' and 'counts' (no {' or '.join(missing)})"
    size, counts = rle["size"], rle["counts"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
        return f"RLE size {size!r} is not [height, width]"
    if size != [height, width]:
        return f"RLE size {size} differs from the image's [height, width] [{height}, {width}]"
    if isinstance(counts, str):
        runs = _compressed_runs(counts)
        if isinstance(runs, str):
            return f"compressed RLE counts {runs}, not a valid COCO RLE string"
        covered = int(runs.sum())
    elif isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts):
            return "uncompressed RLE counts must be non-negative integers"
        covered = sum(counts)
    else:
        return f"RLE counts must be a string or a list of integers, found a {type(counts).__name__}"
    if covered != height * width:
        return f"RLE runs cover {covered} pixels but the image has {height * width}"
    return None


def _compressed_runs(counts: str) -> np.ndarray | str:
    """The runs of COCO's compressed ``counts`` string, or what makes it malformed.

    Runs from the fourth on are stored as the difference to the run two before; a run that comes
    out negative is malformed (pycocotools would wrap it to a huge unsigned one).
    """
    numbers = _compressed_numbers(counts)
    if isinstance(numbers, str):
        return numbers
    runs = numbers.copy()
    runs[1::2] = np.cumsum(numbers[1::2])  # numbers[1] and numbers[2] are runs, the rest differences
    runs[2::2] = np.cumsum(numbers[2::2])
    if (runs < 0).any():
        return "decode to a negative run"
    return runs


def _compressed_numbers(counts: str) -> np.ndarray | str:
    """The signed numbers of a compressed counts string, or what makes it malformed.

    Each number is little-endian base 32 over the characters ``'0'..'o'``: bit 0x20 of a character
    says more follow, bit 0x10 of the last one makes the number negative.
    """
    codes = np.frombuffer(counts.encode("utf-32-le"), np.uint32).astype(np.int64) - 48  # one per character
    if ((codes < 0) | (codes > 63)).any():
        return "contain characters outside '0'..'o'"
    if codes.size == 0:
        return codes
    more = (codes & 0x20) != 0
    if more[-1]:
        return "end in the middle of a number"
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    digit = np.arange(codes.size) - np.repeat(starts, ends - starts + 1)
    if digit.max() >= _MAX_CHARS_PER_NUMBER:
        return "contain an overlong number"
    values = np.add.reduceat((codes & 0x1F) << (5 * digit), starts)
    negative = ((codes[ends] & 0x10) != 0).astype(np.int64)
    return values - (negative << (5 * (digit[ends] + 1)))
