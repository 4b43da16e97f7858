"""Drawing primitives of the synthetic world: signed distances, shapes, textures, camera.

Every shape is a signed distance function (SDF) in its own local frame: negative inside, in pixels.
It is evaluated on the pixel-centre grid of the shape's bounding box only, which keeps a 500-image
dataset within seconds. The hard mask is ``sd < 0`` (pixel centre inside the shape) and the paint
coverage is ``clip(0.5 - sd, 0, 1)``: edges are anti-aliased in the image, yet a pixel is painted
more than half exactly when it belongs to the mask, so image and masks never disagree.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable

import numpy as np
from scipy import ndimage

SDF = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``sd(x, y)``: float32 grids of local coordinates -> signed distance of the same shape."""

TEXTURES = ("flat", "stripes", "checker", "speckle", "gradient")


def ellipse_sd(a: float, b: float) -> SDF:
    """Ellipse with semi-axes ``a`` (x) and ``b`` (y); first-order distance estimate."""

    def sd(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        k0 = np.hypot(x / a, y / b)
        k1 = np.maximum(np.hypot(x / (a * a), y / (b * b)), 1e-6)
        return k0 * (k0 - 1.0) / k1

    return sd


def box_sd(half_w: float, half_h: float) -> SDF:
    def sd(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = np.abs(x) - half_w, np.abs(y) - half_h
        outside = np.hypot(np.maximum(dx, 0.0), np.maximum(dy, 0.0))
        return outside + np.minimum(np.maximum(dx, dy), 0.0)

    return sd


def polygon_sd(vertices: np.ndarray) -> SDF:
    """Simple polygon ``(K, 2)``: distance to the nearest edge, sign from the even-odd rule."""
    verts = np.asarray(vertices, np.float64)

    def sd(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        d2 = np.full(x.shape, np.inf, np.float32)
        inside = np.zeros(x.shape, bool)
        for (ax, ay), (bx, by) in zip(verts, np.roll(verts, -1, axis=0)):
            ex, ey = bx - ax, by - ay
            wx, wy = x - ax, y - ay
            t = np.clip((wx * ex + wy * ey) / max(ex * ex + ey * ey, 1e-12), 0.0, 1.0)
            d2 = np.minimum(d2, (wx - t * ex) ** 2 + (wy - t * ey) ** 2)
            straddles = (ay > y) != (by > y)
            inside ^= straddles & (x < ax + (y - ay) * ex / (ey if ey != 0 else 1e-12))
        return np.where(inside, -1.0, 1.0) * np.sqrt(d2)

    return sd


def polyline_sd(points: np.ndarray, half_width: float) -> SDF:
    """A stroke of ``half_width`` along the polyline ``(K, 2)`` (round caps and joints)."""
    pts = np.asarray(points, np.float64)

    def sd(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        d2 = np.full(x.shape, np.inf, np.float32)
        for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:]):
            ex, ey = bx - ax, by - ay
            wx, wy = x - ax, y - ay
            t = np.clip((wx * ex + wy * ey) / max(ex * ex + ey * ey, 1e-12), 0.0, 1.0)
            d2 = np.minimum(d2, (wx - t * ex) ** 2 + (wy - t * ey) ** 2)
        return np.sqrt(d2) - half_width

    return sd


def _disc(r: float, rng: np.random.Generator) -> tuple[SDF, float]:
    return ellipse_sd(r, r * rng.uniform(0.65, 1.0)), r


def _box(r: float, rng: np.random.Generator) -> tuple[SDF, float]:
    half_h = r * rng.uniform(0.35, 1.0)
    return box_sd(r, half_h), float(np.hypot(r, half_h))


def _triangle(r: float, rng: np.random.Generator) -> tuple[SDF, float]:
    angles = np.deg2rad(np.array([90.0, 210.0, 330.0]) + rng.uniform(-20, 20, 3))
    radii = r * rng.uniform(0.8, 1.0, 3)
    verts = np.stack([radii * np.cos(angles), radii * np.sin(angles) * rng.uniform(0.7, 1.0)], 1)
    return polygon_sd(verts), r


def _star(r: float, rng: np.random.Generator) -> tuple[SDF, float]:
    points = int(rng.integers(5, 7))
    angles = np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, r, r * rng.uniform(0.38, 0.55))
    verts = np.stack([radii * np.cos(angles), radii * np.sin(angles) * rng.uniform(0.8, 1.0)], 1)
    return polygon_sd(verts), r


def _ring(r: float, rng: np.random.Generator) -> tuple[SDF, float]:
    b = r * rng.uniform(0.7, 1.0)
    hole = rng.uniform(0.45, 0.7)
    mid = ellipse_sd(r * (1 + hole) / 2, b * (1 + hole) / 2)
    half_wall = (1 - hole) / 2 * b
    return (lambda x, y: np.abs(mid(x, y)) - half_wall), r


def _cross(r: float, rng: np.random.Generator) -> tuple[SDF, float]:
    half_t = r * rng.uniform(0.14, 0.24)
    across, down = box_sd(r, half_t), box_sd(half_t, r * rng.uniform(0.75, 1.0))
    return (lambda x, y: np.minimum(across(x, y), down(x, y))), float(np.hypot(r, half_t))


def _regular(sides: int) -> Callable[[float, np.random.Generator], tuple[SDF, float]]:
    def make(r: float, rng: np.random.Generator) -> tuple[SDF, float]:
        angles = rng.uniform(0, 2 * np.pi) + np.arange(sides) * 2 * np.pi / sides
        radii = r * rng.uniform(0.9, 1.0, sides)
        verts = np.stack([radii * np.cos(angles), radii * np.sin(angles) * rng.uniform(0.85, 1.0)], 1)
        return polygon_sd(verts), r

    return make


def _crescent(r: float, rng: np.random.Generator) -> tuple[SDF, float]:
    outer, cut = ellipse_sd(r, r), ellipse_sd(r * rng.uniform(0.8, 0.95), r * rng.uniform(0.8, 0.95))
    shift = r * rng.uniform(0.35, 0.55)
    return (lambda x, y: np.maximum(outer(x, y), -cut(x - shift, y))), r


def _heart(r: float, rng: np.random.Generator) -> tuple[SDF, float]:
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    verts = np.stack([x * rng.uniform(0.85, 1.0), y + 2.5], 1) * (r / 17.0)
    return polygon_sd(verts), r


def _arrow(r: float, rng: np.random.Generator) -> tuple[SDF, float]:
    shaft, head = r * rng.uniform(0.14, 0.24), r * rng.uniform(0.45, 0.65)
    neck = r * rng.uniform(0.05, 0.35)
    verts = [(-r, -shaft), (neck, -shaft), (neck, -head), (r, 0.0), (neck, head), (neck, shaft), (-r, shaft)]
    return polygon_sd(np.array(verts)), r


def _semicircle(r: float, rng: np.random.Generator) -> tuple[SDF, float]:
    disc = ellipse_sd(r, r * rng.uniform(0.8, 1.0))
    return (lambda x, y: np.maximum(disc(x, y + 0.25 * r), -(y + 0.25 * r))), r


def _chevron(r: float, rng: np.random.Generator) -> tuple[SDF, float]:
    depth, thick = r * rng.uniform(0.5, 0.8), r * rng.uniform(0.3, 0.5)
    verts = [(-r, -depth / 2), (0.0, depth / 2), (r, -depth / 2), (r, -depth / 2 + thick), (0.0, depth / 2 + thick),
             (-r, -depth / 2 + thick)]
    return polygon_sd(np.array(verts) - [0.0, thick / 2]), r


def _ell(r: float, rng: np.random.Generator) -> tuple[SDF, float]:
    half_t = r * rng.uniform(0.2, 0.3)
    upright = box_sd(half_t, r)
    foot = box_sd(r * rng.uniform(0.45, 0.6), half_t)
    return (lambda x, y: np.minimum(upright(x + 0.4 * r, y), foot(x, y - r + half_t))), float(np.hypot(r, r))


_CLASS_SHAPES = {
    "disc": _disc, "box": _box, "triangle": _triangle, "star": _star, "ring": _ring, "cross": _cross,
    # the source world's extra vocabulary
    "hexagon": _regular(6), "pentagon": _regular(5), "crescent": _crescent, "heart": _heart, "arrow": _arrow,
    "semicircle": _semicircle, "chevron": _chevron, "ell": _ell,
}


def class_shape(name: str, size: float, rng: np.random.Generator) -> tuple[SDF, float]:
    """One instance of class ``name`` with diameter about ``size`` px: ``(sdf, bounding radius)``.

    Aspect, proportions (hole size, arm width, star points) and vertex positions are jittered
    so that a class is a family of shapes, not a template.
    """
    if name not in _CLASS_SHAPES:
        raise ValueError(f"unknown synthetic class {name!r}")
    return _CLASS_SHAPES[name](size / 2.0, rng)


def blob_shape(size: float, rng: np.random.Generator) -> tuple[SDF, float]:
    """A lumpy potato: low harmonics only, so it resembles no class (not a disc, not a star)."""
    r = size / 2.0
    theta = np.linspace(0, 2 * np.pi, 28, endpoint=False)
    radius = np.ones_like(theta)
    for k in (2, 3):
        radius += rng.uniform(0.12, 0.3) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    radius = r * np.clip(radius, 0.35, None) / radius.max()
    verts = np.stack([radius * np.cos(theta), radius * np.sin(theta)], 1)
    return polygon_sd(verts), r


def stroke_shape(length: float, rng: np.random.Generator) -> tuple[SDF, float]:
    """A straight line or a random-walk scribble about ``length`` px long."""
    segments = 1 if rng.random() < 0.5 else int(rng.integers(3, 8))
    headings = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.9, segments))
    steps = (length / segments) * np.stack([np.cos(headings), np.sin(headings)], 1)
    points = np.vstack([np.zeros((1, 2)), np.cumsum(steps, 0)])
    points -= points.mean(0)
    half_width = rng.uniform(0.6, 2.5)
    return polyline_sd(points, half_width), float(np.hypot(*points.T).max() + half_width)


def fragment_shape(name: str, size: float, rng: np.random.Generator) -> tuple[SDF, float]:
    """Part of a class shape cut by a half-plane (painted faint, never annotated)."""
    shape, radius = class_shape(name, size, rng)
    angle = rng.uniform(0, 2 * np.pi)
    nx, ny, offset = np.cos(angle), np.sin(angle), rng.uniform(-0.3, 0.3) * size / 2
    return (lambda x, y: np.maximum(shape(x, y), x * nx + y * ny - offset)), radius


def rasterise(
    shape: SDF, radius: float, centre: tuple[float, float], angle: float, image_hw: tuple[int, int]
) -> tuple[int, int, np.ndarray] | None:
    """Signed distances on the shape's bounding box clipped to the image: ``(y0, x0, sd (h, w) f32)``.

    ``centre`` is ``(x, y)`` in pixels with pixel centres at integer coordinates; ``None`` when the box
    misses the image.
    """
    cx, cy = centre
    height, width = image_hw
    x0, x1 = max(int(np.floor(cx - radius - 1)), 0), min(int(np.ceil(cx + radius + 2)), width)
    y0, y1 = max(int(np.floor(cy - radius - 1)), 0), min(int(np.ceil(cy + radius + 2)), height)
    if x0 >= x1 or y0 >= y1:
        return None
    dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx -= np.float32(cx)
    dy -= np.float32(cy)
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return y0, x0, shape(c * dx + s * dy, c * dy - s * dx).astype(np.float32)


def random_colour(rng: np.random.Generator, saturation: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """RGB float32 ``(3,)`` in ``[0, 1]``, uniform in hue, saturation in ``saturation``, not pitch black."""
    h, s, v = rng.random(), rng.uniform(*saturation), rng.uniform(0.12, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32)


def texture(
    kind: str, box: tuple[int, int, int, int], c1: np.ndarray, c2: np.ndarray, rng: np.random.Generator,
    scale: float = 1.0,
) -> np.ndarray:
    """Fill ``(h, w, 3)`` float32 for ``box = (y0, x0, h, w)`` in image coordinates (stripes line up
    across the image). ``scale`` stretches stripe/checker periods, e.g. for backgrounds."""
    y0, x0, h, w = box
    ys, xs = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    u = xs * np.cos(angle) + ys * np.sin(angle)
    period = rng.uniform(3.0, 12.0) * scale
    if kind == "flat":
        t = np.zeros((h, w), np.float32)
    elif kind == "stripes":
        t = 0.5 + 0.5 * np.clip(3.0 * np.sin(2 * np.pi * u / period), -1, 1)
    elif kind == "checker":
        v = -xs * np.sin(angle) + ys * np.cos(angle)
        t = (np.floor(u / period) + np.floor(v / period)) % 2
    elif kind == "speckle":
        cell = int(rng.integers(1, 4))
        t = rng.random((h // cell + 1, w // cell + 1)).repeat(cell, 0).repeat(cell, 1)[:h, :w]
    elif kind == "gradient":
        t = np.clip((u - u.min()) / max(float(np.ptp(u)), 1.0), 0, 1)
    else:
        raise ValueError(f"unknown texture {kind!r}")
    return (c1 + (c2 - c1) * t[..., None].astype(np.float32)).astype(np.float32)


def smooth_noise(height: int, width: int, cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Low-frequency RGB noise ``(height, width, 3)`` float32 in ``[0, 1]``: a random grid of
    ``cells`` interpolated bilinearly (uneven lighting and stains)."""
    grid = rng.random((cells[0] + 1, cells[1] + 1, 3)).astype(np.float32)
    gy = np.linspace(0, cells[0], height, dtype=np.float32)
    gx = np.linspace(0, cells[1], width, dtype=np.float32)
    iy = np.minimum(gy.astype(int), cells[0] - 1)
    ix = np.minimum(gx.astype(int), cells[1] - 1)
    fy, fx = (gy - iy)[:, None, None], (gx - ix)[None, :, None]
    top = grid[iy][:, ix] * (1 - fx) + grid[iy][:, ix + 1] * fx
    bottom = grid[iy + 1][:, ix] * (1 - fx) + grid[iy + 1][:, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def background(
    height: int, width: int, rng: np.random.Generator, *,
    textures: tuple[float, ...] = (0.15, 0.2, 0.15, 0.2, 0.3), lighting: tuple[float, float] = (0.1, 0.5),
    saturation: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Textured, unevenly lit backdrop ``(height, width, 3)`` float32: texture kind drawn with the
    probabilities ``textures`` (in TEXTURES order), uneven lighting of amplitude in ``lighting``."""
    c1 = random_colour(rng, saturation)
    c2 = c1 + rng.uniform(0.1, 0.45) * (random_colour(rng, saturation) - c1)
    kind = str(rng.choice(TEXTURES, p=list(textures)))
    canvas = texture(kind, (0, 0, height, width), c1, c2, rng, scale=rng.uniform(1.0, 3.0))
    cells = (int(rng.integers(2, 6)), int(rng.integers(2, 8)))
    canvas += (smooth_noise(height, width, cells, rng) - 0.5) * rng.uniform(*lighting)
    return canvas


def paint(canvas: np.ndarray, y0: int, x0: int, sd: np.ndarray, fill: np.ndarray, alpha: float = 1.0) -> None:
    """Alpha-blend ``fill (h, w, 3)`` into ``canvas`` in place where the shape ``sd (h, w)`` covers."""
    h, w = sd.shape
    cover = (np.clip(0.5 - sd, 0.0, 1.0) * np.float32(alpha))[..., None]
    region = canvas[y0 : y0 + h, x0 : x0 + w]
    region += (fill - region) * cover


def camera(
    image: np.ndarray, rng: np.random.Generator, *, blur_prob: float = 0.25, noise: tuple[float, float] = (0.003, 0.035)
) -> np.ndarray:
    """Photometric variation of one shot: contrast, brightness, colour cast, gamma, slight blur with
    probability ``blur_prob``, sensor noise of sigma in ``noise``; float ``(H, W, 3)`` -> uint8 ``(H, W, 3)``."""
    mean = image.mean(axis=(0, 1), keepdims=True)
    image = (image - mean) * rng.uniform(0.7, 1.3) + mean
    image = image * rng.uniform(0.7, 1.25) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    image = np.clip(image, 0.0, 1.0) ** np.float32(rng.uniform(0.7, 1.4))
    if rng.random() < blur_prob:
        image = ndimage.gaussian_filter(image, sigma=(rng.uniform(0.4, 1.0),) * 2 + (0.0,))
    image = image + rng.normal(0.0, rng.uniform(*noise), image.shape).astype(np.float32)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
