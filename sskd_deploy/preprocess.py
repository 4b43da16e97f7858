"""The one host-side preprocessing: fit an RGB image into the model's fixed input, uint8.

The network takes uint8 NCHW RGB at a fixed ``(H_in, W_in)``. An image is resized keeping its
aspect ratio so that it fits, placed in the top-left corner and padded with zeros on the bottom
and right. Keeping the image at the origin makes the geometry a pure scale, which
:mod:`sskd_deploy.evaluation.postprocess` inverts exactly. Normalisation happens inside the graph, so the
host never touches floats here. Training, calibration, every runner and the Triton client call
these functions, so there is exactly one definition of "what the model saw".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class PreprocessInfo:
    """How one image was mapped into the model input.

    Attributes:
        original_size: ``(h, w)`` of the decoded image.
        resized_size: ``(h, w)`` after the aspect-preserving resize, before padding; the image
            occupies ``input[:, :h, :w]``.
        input_size: ``(H_in, W_in)`` the model sees.
        scale: the fit factor ``min(H_in / h, W_in / w)`` that produced ``resized_size``.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    input_size: tuple[int, int]
    scale: float

    @property
    def axis_scales(self) -> tuple[float, float]:
        """Exact ``(resized_h / h, resized_w / w)``.

        Rounding to whole pixels makes these differ from ``scale`` by up to half a pixel over the
        image; the resize really applied is per axis, so exact geometry uses these.
        """
        (h, w), (rh, rw) = self.original_size, self.resized_size
        return rh / h, rw / w


def _check_size(size: Sequence[int], what: str) -> tuple[int, int]:
    ok = len(size) == 2 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)
    if not ok or min(size) <= 0:
        raise ValueError(f"{what} must be two positive integers (height, width), got {tuple(size)}")
    return int(size[0]), int(size[1])


def fit_geometry(original_size: Sequence[int], input_size: Sequence[int]) -> PreprocessInfo:
    """Compute the resize that fits ``original_size`` into ``input_size`` keeping aspect ratio."""
    h, w = _check_size(original_size, "original_size")
    h_in, w_in = _check_size(input_size, "input_size")
    scale = min(h_in / h, w_in / w)
    # Round half up (not Python's banker's rounding) and clamp: the limiting side lands exactly
    # on the input size even when h * (h_in / h) comes out a hair below it in floating point.
    rh = min(h_in, max(1, math.floor(h * scale + 0.5)))
    rw = min(w_in, max(1, math.floor(w * scale + 0.5)))
    return PreprocessInfo((h, w), (rh, rw), (h_in, w_in), float(scale))


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape[:2]:
        raise ValueError(
            "image must be a non-empty uint8 (H, W, 3) RGB array, "
            f"got dtype {image.dtype} shape {image.shape}"
        )
    return image


def preprocess_image(image: np.ndarray, input_size: Sequence[int]) -> tuple[np.ndarray, PreprocessInfo]:
    """Resize and pad one RGB image to the model input.

    Args:
        image: uint8 ``(H, W, 3)`` RGB.
        input_size: ``(H_in, W_in)``.

    Returns:
        uint8 ``(3, H_in, W_in)`` (CHW, zeros in the padding) and the :class:`PreprocessInfo`.
    """
    image = _check_image(image)
    info = fit_geometry(image.shape[:2], input_size)
    rh, rw = info.resized_size
    if (rh, rw) != info.original_size:
        # Pillow's bilinear filter is deterministic across platforms and antialiases when
        # shrinking, which a plain two-tap interpolation would not.
        image = np.asarray(Image.fromarray(image).resize((rw, rh), Image.Resampling.BILINEAR))
    out = np.zeros((3, *info.input_size), dtype=np.uint8)
    out[:, :rh, :rw] = image.transpose(2, 0, 1)
    return out, info


def preprocess_batch(
    images: Sequence[np.ndarray], input_size: Sequence[int]
) -> tuple[np.ndarray, list[PreprocessInfo]]:
    """Preprocess several images into one uint8 ``(N, 3, H_in, W_in)`` batch (``N`` may be 0)."""
    h_in, w_in = _check_size(input_size, "input_size")
    batch = np.zeros((len(images), 3, h_in, w_in), dtype=np.uint8)
    infos = []
    for i, image in enumerate(images):
        batch[i], info = preprocess_image(image, (h_in, w_in))
        infos.append(info)
    return batch, infos


def source_indices(n_out: int, n_src: int, scale: float) -> np.ndarray:
    """Nearest source index for each of ``n_out`` pixels under ``out = src * scale`` (pixel centres)."""
    idx = np.floor((np.arange(n_out) + 0.5) / scale).astype(np.int64)
    return np.clip(idx, 0, n_src - 1)


def resize_masks_for_input(masks: np.ndarray, info: PreprocessInfo) -> np.ndarray:
    """Map masks from the original image into the padded input frame, nearest neighbour.

    Args:
        masks: bool ``(N, h, w)`` with ``(h, w) == info.original_size``.

    Returns:
        bool ``(N, H_in, W_in)``, False in the padding.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != info.original_size:
        h, w = info.original_size
        raise ValueError(f"masks must be bool (N, {h}, {w}), got shape {masks.shape}")
    (h, w), (rh, rw) = info.original_size, info.resized_size
    sy, sx = info.axis_scales
    out = np.zeros((masks.shape[0], *info.input_size), dtype=bool)
    rows = np.take(masks, source_indices(rh, h, sy), axis=1)
    out[:, :rh, :rw] = np.take(rows, source_indices(rw, w, sx), axis=2)
    return out
