"""Weak (geometric) and strong (photometric) views of one image for semi-supervised training.

The weak view resizes, flips and crops (or pads) an image and its instance masks with one
geometry. The strong view is made *from the weak view* by colour changes and blur only, so pixel
``(r, c)`` shows the same scene point in both views: the pixel-wise contrastive loss pairs them
without any warping. The geometry is an explicit :class:`ViewGeometry` record, so a point can be
mapped between the original image and a view.

Coordinates: continuous ``(x, y)`` put the centre of pixel ``i`` at ``i + 0.5`` (Pillow's resampling
convention), so resizing by ``s`` maps ``x`` to ``s * x`` exactly. Everything is numpy + Pillow +
scipy; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

# ITU-R BT.601 luma weights, the ones Pillow's "L" conversion and torchvision's grayscale use.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"image must be a uint8 numpy array, got {getattr(image, 'dtype', type(image))}")
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"image must be (H, W, 3) with H, W > 0, got shape {image.shape}")


def _check_masks(masks: np.ndarray, height: int, width: int) -> None:
    if not isinstance(masks, np.ndarray) or masks.dtype != np.bool_:
        raise ValueError(f"masks must be a bool numpy array, got {getattr(masks, 'dtype', type(masks))}")
    if masks.ndim != 3 or masks.shape[1:] != (height, width):
        raise ValueError(f"masks must be (N, {height}, {width}) to match the image, got shape {masks.shape}")


def _axis_indices(n_in: int, n_resized: int, origin: int, n_out: int, flip: bool) -> np.ndarray:
    """Nearest input index ``(n_out,)`` int64 for each view position along one axis; -1 on padding."""
    pos = np.arange(n_out, dtype=np.int64) + origin
    inside = pos < n_resized
    if flip:
        pos = n_resized - 1 - pos
    src = np.floor((pos + 0.5) * (n_in / n_resized)).astype(np.int64)
    return np.where(inside, np.clip(src, 0, n_in - 1), -1)


@dataclass(frozen=True)
class ViewGeometry:
    """How a view was cut from an image: resize, then mirror left-right (if ``flip``), then crop.

    ``input_size`` ``(H, W)`` of the source; ``resized_size`` ``(Hr, Wr)`` after the resize;
    ``crop_origin`` ``(y0, x0)`` >= 0, the top-left of the view in the resized (and mirrored) image;
    ``output_size`` ``(Ho, Wo)``. Where the view runs past the bottom/right edge it is padding.
    """

    input_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_origin: tuple[int, int]
    output_size: tuple[int, int]
    flip: bool

    def to_view(self, points: np.ndarray) -> np.ndarray:
        """Map float ``(..., 2)`` ``(x, y)`` points from input to view coordinates."""
        pts = np.asarray(points, dtype=np.float64)
        (h, w), (hr, wr) = self.input_size, self.resized_size
        x, y = pts[..., 0] * (wr / w), pts[..., 1] * (hr / h)
        if self.flip:
            x = wr - x
        return np.stack([x - self.crop_origin[1], y - self.crop_origin[0]], axis=-1)

    def to_input(self, points: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_view`: float ``(..., 2)`` ``(x, y)`` view points to input points."""
        pts = np.asarray(points, dtype=np.float64)
        (h, w), (hr, wr) = self.input_size, self.resized_size
        x, y = pts[..., 0] + self.crop_origin[1], pts[..., 1] + self.crop_origin[0]
        if self.flip:
            x = wr - x
        return np.stack([x * (w / wr), y * (h / hr)], axis=-1)

    def source_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """Nearest input row ``(Ho,)`` and column ``(Wo,)`` int64 of each view row/column (-1: padding)."""
        (h, w), (hr, wr) = self.input_size, self.resized_size
        (y0, x0), (ho, wo) = self.crop_origin, self.output_size
        return _axis_indices(h, hr, y0, ho, False), _axis_indices(w, wr, x0, wo, self.flip)

    def valid(self) -> np.ndarray:
        """``(Ho, Wo)`` bool: True where the view pixel comes from the image, False on padding."""
        rows, cols = self.source_indices()
        return (rows >= 0)[:, None] & (cols >= 0)[None, :]


def _warp_image(image: np.ndarray, geometry: ViewGeometry, pad_value: int) -> np.ndarray:
    """Bilinear (Pillow, antialiased when shrinking) view of ``image``; ``(Ho, Wo, 3)`` uint8."""
    (h, w), (hr, wr) = geometry.input_size, geometry.resized_size
    (y0, x0), (ho, wo) = geometry.crop_origin, geometry.output_size
    hv, wv = max(0, min(ho, hr - y0)), max(0, min(wo, wr - x0))
    out = np.full((ho, wo, 3), pad_value, dtype=np.uint8)
    if hv == 0 or wv == 0:
        return out
    # Columns [x0, x0 + wv) of the mirrored resized image are [wr - x0 - wv, wr - x0) of the unmirrored one.
    left = wr - x0 - wv if geometry.flip else x0
    # Resizing only the box samples at the same points as resize-all-then-crop (values agree to a grey
    # level or two of fixed-point rounding) without resampling the pixels the crop drops.
    box = (left * w / wr, y0 * h / hr, (left + wv) * w / wr, (y0 + hv) * h / hr)
    patch = np.asarray(Image.fromarray(image).resize((wv, hv), Image.Resampling.BILINEAR, box=box))
    out[:hv, :wv] = patch[:, ::-1] if geometry.flip else patch
    return out


def apply_geometry(
    image: np.ndarray, masks: np.ndarray, geometry: ViewGeometry, pad_value: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut the view ``geometry`` describes from ``image`` (H, W, 3) uint8 and ``masks`` (N, H, W) bool.

    Returns ``(image (Ho, Wo, 3) uint8, masks (N, Ho, Wo) bool, keep (N,) bool, valid (Ho, Wo) bool)``:
    the image is resampled bilinearly, masks by nearest neighbour on the same pixel grid; ``keep``
    marks instances with at least one pixel left in the view, ``valid`` the non-padding pixels.
    """
    _check_image(image)
    _check_masks(masks, image.shape[0], image.shape[1])
    if geometry.input_size != image.shape[:2]:
        raise ValueError(f"geometry is for input size {geometry.input_size}, image is {image.shape[:2]}")
    rows, cols = geometry.source_indices()
    valid = (rows >= 0)[:, None] & (cols >= 0)[None, :]
    view_masks = masks[:, np.maximum(rows, 0)[:, None], np.maximum(cols, 0)[None, :]] & valid
    keep = view_masks.any(axis=(1, 2))
    return _warp_image(image, geometry, pad_value), view_masks, keep, valid


@dataclass(frozen=True)
class WeakAugment:
    """Random resize (relative to the scale at which the image fits the output), crop/pad, h-flip."""

    output_size: tuple[int, int]
    scale_range: tuple[float, float] = (0.5, 1.5)
    hflip_prob: float = 0.5
    pad_value: int = 0

    def __post_init__(self) -> None:
        if len(self.output_size) != 2 or min(self.output_size) < 1:
            raise ValueError(f"output_size must be (H, W) with positive sides, got {self.output_size}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        if not 0.0 <= self.hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {self.hflip_prob}")
        if not 0 <= self.pad_value <= 255:
            raise ValueError(f"pad_value must be in [0, 255], got {self.pad_value}")

    def sample(self, height: int, width: int, rng: np.random.Generator) -> ViewGeometry:
        """Draw a geometry for an input of ``height`` x ``width``; always uses four draws of ``rng``."""
        ho, wo = self.output_size
        scale = min(ho / height, wo / width) * rng.uniform(*self.scale_range)
        hr, wr = max(1, round(height * scale)), max(1, round(width * scale))
        y0 = int(rng.integers(0, max(hr - ho, 0) + 1))
        x0 = int(rng.integers(0, max(wr - wo, 0) + 1))
        flip = bool(rng.random() < self.hflip_prob)
        return ViewGeometry((height, width), (hr, wr), (y0, x0), (ho, wo), flip)

    def __call__(
        self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(image (Ho, Wo, 3) uint8, masks (N, Ho, Wo) bool, keep (N,) bool, valid (Ho, Wo) bool)``."""
        _check_image(image)
        geometry = self.sample(image.shape[0], image.shape[1], rng)
        return apply_geometry(image, masks, geometry, self.pad_value)


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` float RGB in [0, 1] to HSV in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc, minc = rgb.max(axis=-1), rgb.min(axis=-1)
    delta = maxc - minc
    safe = np.where(delta > 0, delta, 1)
    sector = np.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4)
    hue = np.where(maxc == r, ((g - b) / safe) % 6, sector)
    hue = np.where(delta > 0, hue / 6, 0)
    sat = np.where(maxc > 0, delta / np.where(maxc > 0, maxc, 1), 0)
    return np.stack([hue, sat, maxc], axis=-1).astype(rgb.dtype)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv`; ``(..., 3)`` float in [0, 1]."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    channels = []
    for n in (5, 3, 1):  # closed form: channel n reads the hue sector offset by n
        k = (n + h * 6) % 6
        channels.append(v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1))
    return np.stack(channels, axis=-1).astype(hsv.dtype)


def _blend(a: np.ndarray, b: np.ndarray | float, factor: float) -> np.ndarray:
    return np.clip(factor * a + (1.0 - factor) * b, 0.0, 1.0)


@dataclass(frozen=True)
class StrongAugment:
    """Colour jitter (random order), random grayscale and Gaussian blur; geometry is untouched.

    Factors are drawn uniformly from ``[max(0, 1 - x), 1 + x]`` for brightness/contrast/saturation
    and ``[-hue, hue]`` turns for hue. ``jitter_prob`` (not in the method text; 1.0 applies the
    jitter always) lets recipes use the common 0.8.
    """

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    jitter_prob: float = 1.0

    def __post_init__(self) -> None:
        if min(self.brightness, self.contrast, self.saturation) < 0 or not 0 <= self.hue <= 0.5:
            raise ValueError("brightness/contrast/saturation must be >= 0 and hue in [0, 0.5]")
        for name in ("grayscale_prob", "blur_prob", "jitter_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < low <= high, got {self.blur_sigma}")

    def _jitter(self, x: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None) -> np.ndarray:
        """Apply the four colour operations to float32 ``(H, W, 3)`` in a random order."""
        for op in rng.permutation(4):
            if op == 0 and self.brightness > 0:
                x = _blend(x, 0.0, rng.uniform(max(0.0, 1 - self.brightness), 1 + self.brightness))
            elif op == 1 and self.contrast > 0:
                gray = x @ _LUMA
                # Padding is not part of the scene, so it must not pull the mean gray level.
                mean = float(gray[valid].mean() if valid is not None and valid.any() else gray.mean())
                x = _blend(x, mean, rng.uniform(max(0.0, 1 - self.contrast), 1 + self.contrast))
            elif op == 2 and self.saturation > 0:
                factor = rng.uniform(max(0.0, 1 - self.saturation), 1 + self.saturation)
                x = _blend(x, (x @ _LUMA)[..., None], factor)
            elif op == 3 and self.hue > 0:
                hsv = rgb_to_hsv(x)
                hsv[..., 0] = (hsv[..., 0] + rng.uniform(-self.hue, self.hue)) % 1.0
                x = hsv_to_rgb(hsv)
        return x.astype(np.float32)

    def __call__(
        self, image: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None = None
    ) -> np.ndarray:
        """Photometric view of ``image`` (H, W, 3) uint8; same shape and dtype.

        ``valid`` (H, W) bool, optional, marks the non-padding pixels (used for the contrast mean).
        """
        _check_image(image)
        x = image.astype(np.float32) / 255.0
        if rng.random() < self.jitter_prob:
            x = self._jitter(x, rng, valid)
        if rng.random() < self.grayscale_prob:
            x = np.repeat((x @ _LUMA)[..., None], 3, axis=-1)
        if rng.random() < self.blur_prob:
            sigma = rng.uniform(*self.blur_sigma)
            x = gaussian_filter(x, sigma=(sigma, sigma, 0), mode="reflect")  # per channel, never across
        return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def make_views(
    image: np.ndarray, masks: np.ndarray, weak: WeakAugment, strong: StrongAugment, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weak and strong views sharing one geometry.

    Returns ``(weak (Ho, Wo, 3) uint8, strong (Ho, Wo, 3) uint8, masks (N, Ho, Wo) bool,
    keep (N,) bool, valid (Ho, Wo) bool)``; callers drop ``masks[~keep]`` with their labels.
    """
    weak_image, view_masks, keep, valid = weak(image, masks, rng)
    return weak_image, strong(weak_image, rng, valid), view_masks, keep, valid


def copy_paste(
    image: np.ndarray, masks: np.ndarray, labels: np.ndarray, valid: np.ndarray,
    source: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], rng: np.random.Generator,
    *, keep_fraction: float = 0.5, min_pixels: int = 16,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simple Copy-Paste (Ghiasi et al., 2021): paste a random subset of another view's instances on top.

    Args:
        image, masks, labels, valid: the view being augmented, ``(H, W, 3)`` uint8, ``(N, H, W)`` bool,
            ``(N,)`` int, ``(H, W)`` bool (non-padding pixels).
        source: the same four arrays of another view of the same size (its own geometry).
        keep_fraction: each source instance is pasted with this probability (at least one is).
    Returns:
        ``(image, masks, labels)``: pasted pixels take the source's colours and belong to the pasted
        instances; the instances underneath lose them, and any left with fewer than ``min_pixels``
        pixels is dropped, so every mask stays exactly what is visible.
    """
    src_image, src_masks, src_labels, src_valid = source
    if src_image.shape != image.shape or len(src_masks) == 0:
        return image, masks, labels
    chosen = rng.random(len(src_masks)) < keep_fraction
    if not chosen.any():
        chosen[int(rng.integers(len(src_masks)))] = True
    pasted = src_masks[chosen] & (src_valid & valid)[None]
    pasted_area = pasted.sum(axis=(1, 2))
    pasted, pasted_labels = pasted[pasted_area >= min_pixels], src_labels[chosen][pasted_area >= min_pixels]
    if len(pasted) == 0:
        return image, masks, labels
    cover = pasted.any(axis=0)
    out = image.copy()
    out[cover] = src_image[cover]
    below = masks & ~cover[None]
    survives = below.sum(axis=(1, 2)) >= min_pixels
    return (out, np.concatenate([below[survives], pasted]),
            np.concatenate([np.asarray(labels)[survives], pasted_labels]).astype(np.asarray(labels).dtype))
