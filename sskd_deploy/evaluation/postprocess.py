"""The one host-side postprocessing: model candidates -> instances on the original image.

The model returns, per image, ``K`` candidates: scores, contiguous labels and mask logits on a
stride-``s`` grid over the padded input. Postprocessing keeps the confident candidates, maps
their logits back to the original image in a single bilinear resample, thresholds them, and can
encode the result as COCO results.

The resample is separable: one matrix per axis maps grid values to original pixels with the
half-pixel-centre convention of ``torch.nn.functional.interpolate(align_corners=False)``. An
original pixel centre ``y + 0.5`` sits at ``(y + 0.5) * scale`` in the input and at
``(y + 0.5) * scale / s - 0.5`` in grid-centre coordinates; padding is never sampled except
where the last grid cell straddles the image border, as in any stride-``s`` model.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sskd_deploy.data.records import CategorySet
from sskd_deploy.preprocess import PreprocessInfo
from sskd_deploy.structures import Instances, masks_to_rles, rle_bbox


@dataclass(frozen=True)
class AxisResampler:
    """Bilinear interpolation along one axis as a matrix, with each row's non-zero span.

    Attributes:
        matrix: float32 ``(n_out, n_in)``, read-only; at most two non-zero weights per row,
            summing to 1.
        lo: int64 ``(n_out,)`` first source index with a non-zero weight (non-decreasing).
        hi: int64 ``(n_out,)`` last source index with a non-zero weight (non-decreasing).
    """

    matrix: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def span(self, first: int, last: int) -> tuple[int, int]:
        """Output range ``[start, stop)`` whose rows give weight to some source in ``[first, last]``."""
        start = int(np.searchsorted(self.hi, first, side="left"))
        stop = int(np.searchsorted(self.lo, last, side="right"))
        return start, stop


@functools.lru_cache(maxsize=64)
def bilinear_axis(n_out: int, n_in: int, ratio: float) -> AxisResampler:
    """Resampler for output pixel ``i`` reading source position ``(i + 0.5) * ratio - 0.5``.

    ``ratio`` is source pixels per output pixel (``n_in / n_out`` for a plain resize). Positions
    are clamped to ``[0, n_in - 1]``, so the border value is repeated rather than extrapolated,
    exactly like ``interpolate(mode="bilinear", align_corners=False)``.
    """
    src = np.clip((np.arange(n_out, dtype=np.float64) + 0.5) * ratio - 0.5, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    matrix = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, i0), 1.0 - w1)  # add, not assign: i0 == i1 at the clamped border
    np.add.at(matrix, (rows, i1), w1)
    matrix = matrix.astype(np.float32)
    nonzero = matrix > 0
    lo = nonzero.argmax(axis=1)
    hi = n_in - 1 - nonzero[:, ::-1].argmax(axis=1)
    for arr in (matrix, lo, hi):
        arr.setflags(write=False)  # shared through the cache
    return AxisResampler(matrix, lo, hi)


def _resamplers(info: PreprocessInfo, grid: tuple[int, int]) -> tuple[AxisResampler, AxisResampler]:
    (h, w), (h_in, w_in) = info.original_size, info.input_size
    gh, gw = grid
    if h_in % gh or w_in % gw:
        raise ValueError(f"mask_logits grid {grid} does not divide the input size {info.input_size}")
    sy, sx = info.axis_scales
    return bilinear_axis(h, gh, sy * gh / h_in), bilinear_axis(w, gw, sx * gw / w_in)


def _paste_mask(out: np.ndarray, z: np.ndarray, ry: AxisResampler, rx: AxisResampler) -> None:
    """Write ``resample(z) > 0`` into bool ``out`` ``(h, w)``; ``z`` is float32 ``(gh, gw)``.

    Weights are non-negative, so a pixel whose source cells are all <= 0 interpolates to <= 0
    (exactly, also in floating point). Only the block fed by positive cells is computed, which
    makes the cost scale with the object rather than the image.
    """
    positive = z > 0
    rows = np.flatnonzero(positive.any(axis=1))
    if rows.size == 0:
        return
    cols = np.flatnonzero(positive.any(axis=0))
    y0, y1 = ry.span(rows[0], rows[-1])
    x0, x1 = rx.span(cols[0], cols[-1])
    if y0 >= y1 or x0 >= x1:  # the positive cells lie entirely in the padding
        return
    a, b = ry.lo[y0], ry.hi[y1 - 1] + 1
    c, d = rx.lo[x0], rx.hi[x1 - 1] + 1
    block = (ry.matrix[y0:y1, a:b] @ z[a:b, c:d]) @ rx.matrix[x0:x1, c:d].T
    np.greater(block, 0, out=out[y0:y1, x0:x1])


def _check_outputs(scores, labels, mask_logits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float32)
    labels = np.asarray(labels)
    logits = np.asarray(mask_logits, dtype=np.float32)
    k = scores.shape[0] if scores.ndim == 1 else -1
    integer_labels = np.issubdtype(labels.dtype, np.integer)
    if labels.shape != (k,) or logits.ndim != 3 or logits.shape[0] != k or not integer_labels:
        raise ValueError(
            "expected scores (K,), integer labels (K,), mask_logits (K, h, w); got shapes "
            f"{scores.shape}, {labels.shape} ({labels.dtype}), {logits.shape}"
        )
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    return scores, labels.astype(np.int64), logits


def postprocess(
    scores: np.ndarray,
    labels: np.ndarray,
    mask_logits: np.ndarray,
    info: PreprocessInfo,
    *,
    score_threshold: float = 0.0,
    mask_threshold: float = 0.0,
    max_detections: int | None = None,
) -> Instances:
    """Turn one image's model outputs into :class:`Instances` on the original image.

    Args:
        scores: float ``(K,)``; labels: integer ``(K,)`` contiguous class indices;
        mask_logits: float ``(K, H_in / s, W_in / s)`` on the stride-``s`` grid of the input.
        info: the :class:`PreprocessInfo` of the image.
        score_threshold: keep candidates with ``score > score_threshold``.
        mask_threshold: a pixel is foreground where the resampled logit ``> mask_threshold``.
        max_detections: keep at most this many, highest scores first (``None``: no limit).

    Returns:
        Instances of size ``info.original_size``, sorted by descending score (stable).
    """
    scores, labels, logits = _check_outputs(scores, labels, mask_logits)
    if max_detections is not None and max_detections < 0:
        raise ValueError(f"max_detections must be >= 0 or None, got {max_detections}")
    ry, rx = _resamplers(info, logits.shape[1:])
    candidates = np.flatnonzero(scores > score_threshold)
    keep = candidates[np.argsort(-scores[candidates], kind="stable")][:max_detections]
    kept = logits[keep] - np.float32(mask_threshold)  # compare with 0: exact under cropping
    if not np.isfinite(kept).all():
        raise ValueError("mask_logits of the kept candidates contain NaN or infinity")
    masks = np.zeros((keep.size, *info.original_size), dtype=bool)
    for out, z in zip(masks, kept):
        _paste_mask(out, z, ry, rx)
    return Instances(info.original_size, masks, labels[keep], scores[keep])


def postprocess_batch(
    scores: np.ndarray,
    labels: np.ndarray,
    mask_logits: np.ndarray,
    infos: Sequence[PreprocessInfo],
    **kwargs: float | int | None,
) -> list[Instances]:
    """:func:`postprocess` for a batch: scores/labels ``(N, K)``, mask_logits ``(N, K, h, w)``."""
    n = len(infos)
    if len(scores) != n or len(labels) != n or len(mask_logits) != n:
        raise ValueError(
            f"batch of {n} infos but {len(scores)} scores, {len(labels)} labels, "
            f"{len(mask_logits)} mask_logits"
        )
    return [postprocess(scores[i], labels[i], mask_logits[i], infos[i], **kwargs) for i in range(n)]


def instances_to_coco_results(instances: Instances, image_id: int, categories: CategorySet) -> list[dict]:
    """COCO result entries for one image.

    Returns:
        one dict per instance with keys ``image_id``, ``category_id`` (the source dataset's id),
        ``segmentation`` (compressed RLE, ``str`` counts), ``score`` and ``bbox`` ``[x, y, w, h]``.
    """
    labels = instances.labels
    if labels.size and (labels.min() < 0 or labels.max() >= len(categories)):
        found = sorted(set(labels.tolist()))
        raise ValueError(f"labels {found} out of range for {len(categories)} categories")
    rles = masks_to_rles(instances.masks)
    return [
        {
            "image_id": int(image_id),
            "category_id": int(categories.source_ids[label]),
            "segmentation": rle,
            "score": float(score),
            "bbox": rle_bbox(rle),
        }
        for rle, label, score in zip(rles, labels.tolist(), instances.scores.tolist())
    ]
