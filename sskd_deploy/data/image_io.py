"""Reading and writing images with errors that name the file.

Pillow is told not to tolerate truncated files, and every decode is forced with ``load()`` so a
corrupt image fails here, at the file it came from, not later inside a batch.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from sskd_deploy.errors import InputError
from sskd_deploy.io import atomic_write_bytes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

# Refuse decompression bombs well below Pillow's default warning threshold multiplied out.
MAX_IMAGE_PIXELS = 16384 * 16384
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _decode(source: Path | io.BytesIO, label: str | Path, mode: str) -> np.ndarray:
    try:
        with Image.open(source) as img:
            img.load()
            return np.asarray(img.convert(mode))
    except FileNotFoundError:
        raise InputError(label, "file not found") from None
    except UnidentifiedImageError:
        raise InputError(label, "not an image (unrecognised format)") from None
    except Image.DecompressionBombError as err:
        raise InputError(label, f"image too large ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(label, f"corrupt or truncated image ({err})") from None


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB uint8 ``(H, W, 3)``."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a directory, expected an image file")
    return _decode(path, path, "RGB")


def read_label_png(path: str | Path) -> np.ndarray:
    """Decode a single-channel label image (e.g. Cityscapes ``instanceIds``) keeping its bit depth."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except UnidentifiedImageError:
        raise InputError(path, "not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(path, f"corrupt or truncated image ({err})") from None


def decode_image_bytes(data: bytes, label: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (as a client or server receives them) to RGB uint8."""
    return _decode(io.BytesIO(data), label, "RGB")


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` read from the header only."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            return int(img.height), int(img.width)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(path, f"not a readable image ({err})") from None


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 ``(H, W)`` or ``(H, W, 3)`` array; deterministic for equal input."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def write_png(path: str | Path, array: np.ndarray) -> Path:
    return atomic_write_bytes(path, encode_png(array))
