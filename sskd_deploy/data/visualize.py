"""Mask overlays: instances drawn over their image with class names, tiled into one picture.

Used by ``sskd-deploy data show``, the main job, and later by prediction and report pages, so a
ground-truth picture and a prediction picture look the same.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from sskd_deploy.data.image_io import write_png
from sskd_deploy.structures import Instances


def instance_colours(n: int) -> np.ndarray:
    """``n`` well-separated RGB colours (uint8 ``(n, 3)``), stable for a given ``n``."""
    golden = 0.618033988749895
    hues = (np.arange(n) * golden) % 1.0
    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.75, 1.0)] for h in hues], np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has a fixed-size bitmap font only
        return ImageFont.load_default()


def overlay_instances(
    image: np.ndarray,
    instances: Instances,
    class_names: Sequence[str],
    *,
    alpha: float = 0.45,
    show_scores: bool = False,
) -> np.ndarray:
    """Blend each mask in its own colour, outline it, and write its class name at its top.

    Args:
        image: uint8 ``(H, W, 3)``.
        instances: masks at the image's size.
        class_names: names indexed by ``instances.labels``.
    Returns:
        uint8 ``(H, W, 3)``.
    """
    if image.shape[:2] != instances.image_size:
        raise ValueError(f"image is {image.shape[:2]} but instances are {instances.image_size}")
    out = image.astype(np.float32)
    colours = instance_colours(len(instances)).astype(np.float32)
    for mask, colour in zip(instances.masks, colours):
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
        edge = mask & ~ndimage.binary_erosion(mask)
        out[edge] = colour
    canvas = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = _font(max(9, min(image.shape[:2]) // 24))
    for i, (box, colour) in enumerate(zip(instances.boxes(), colours.astype(int))):
        if box[2] <= box[0]:
            continue
        text = class_names[int(instances.labels[i])]
        if show_scores:
            text += f" {instances.scores[i]:.2f}"
        text_h = draw.textbbox((0, 0), text, font=font)[3]
        x, y = float(box[0]), max(0.0, float(box[1]) - text_h - 2)
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(0, 0, 0))
        draw.text((x, y), text, fill=tuple(int(c) for c in colour), font=font)
    return np.asarray(canvas)


def tile_images(tiles: Sequence[np.ndarray], *, columns: int = 4, gap: int = 4) -> np.ndarray:
    """Arrange uint8 ``(H, W, 3)`` tiles of any sizes on a dark grid, row-major."""
    if not tiles:
        raise ValueError("no images to tile")
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    grid = np.full((rows * cell_h + (rows + 1) * gap, columns * cell_w + (columns + 1) * gap, 3), 24, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        y, x = gap + r * (cell_h + gap), gap + c * (cell_w + gap)
        grid[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return grid


def save_overlay_grid(
    items: Sequence[tuple[np.ndarray, Instances]],
    class_names: Sequence[str],
    out: str | Path,
    *,
    columns: int = 4,
    show_scores: bool = False,
    min_width: int = 384,
) -> Path:
    """Overlay every ``(image, instances)`` pair, tile them and write a PNG atomically.

    Images narrower than ``min_width`` are enlarged first (:func:`enlarge`).
    """
    tiles = [overlay_instances(*enlarge(img, inst, min_width=min_width), class_names, show_scores=show_scores)
             for img, inst in items]
    return write_png(out, tile_images(tiles, columns=columns))


def enlarge(image: np.ndarray, instances: Instances, *, min_width: int) -> tuple[np.ndarray, Instances]:
    """Repeat pixels (nearest, integer factor) until the image is at least ``min_width`` wide, masks
    alike, so that small images still get readable labels and outlines when overlaid."""
    factor = max(1, -(-min_width // image.shape[1]))
    if factor == 1:
        return image, instances
    image = image.repeat(factor, axis=0).repeat(factor, axis=1)
    masks = instances.masks.repeat(factor, axis=1).repeat(factor, axis=2)
    return image, Instances(image.shape[:2], masks, instances.labels, instances.scores, instances.iscrowd)
