"""Scene composition for the synthetic world: which shapes go where, in which z-order, and what
stays visible of each.

Six shape classes (class = shape, never colour: colour and texture are drawn independently of the
class) are scattered over cluttered, textured backgrounds in random z-order. An instance's mask is
the part of it left visible by everything painted above it, unannotated distractors included;
instances hidden below ``MIN_VISIBLE_PX`` pixels or ``MIN_VISIBLE_FRACTION`` of their area are not
drawn at all rather than left in the picture unlabelled. What is deliberately left unlabelled is
clutter a model must learn to ignore: lumpy blobs, lines, scribbles and faint cut-off pieces of
class shapes.

Two worlds share this composition: the **target** world (the embedded default dataset, six classes,
busy textures, heavy clutter, a noisy camera) and the **source** world, where the foundation
stand-ins are pretrained: a wider vocabulary of fourteen named shapes that includes the six target
names, drawn in a cleaner "studio" style (mostly flat or graded paint on plain, evenly lit
backdrops, vivid colours, little clutter, a clean camera). The difference is the domain gap that
stage 1 adapts across.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sskd_deploy.data import synth_draw as draw
from sskd_deploy.structures import Instances

SYNTH_CLASSES: tuple[str, ...] = ("disc", "box", "triangle", "star", "ring", "cross")
# In a different order from the target's, so that zero-shot use must map names, not indices.
SOURCE_CLASSES: tuple[str, ...] = (
    "hexagon", "star", "arrow", "disc", "heart", "cross", "semicircle", "box", "crescent", "ring", "chevron",
    "triangle", "pentagon", "ell",
)

MIN_VISIBLE_PX = 48
MIN_VISIBLE_FRACTION = 0.2
MIN_SIZE_PX = 16.0
MAX_SIZE_FRACTION = 0.45  # of the shorter image side
# Plain log-uniform sizes leave ~80% of instances COCO-small at 192x256, too few pixels for a CPU-sized
# student to learn shape from; this exponent moves the median diameter from ~29 to ~40 px.
SIZE_BIAS = 0.6
MIN_CONTRAST = 0.3  # RGB distance between an instance's base colour and the backdrop under it


@dataclass(frozen=True)
class World:
    """Rendering statistics of one synthetic world. Probabilities are in ``synth_draw.TEXTURES``
    order; ``(low, high)`` pairs are uniform ranges, integer ones half-open counts."""

    name: str
    classes: tuple[str, ...]
    instance_textures: tuple[float, ...]
    background_textures: tuple[float, ...]
    lighting: tuple[float, float]  # amplitude of the backdrop's uneven lighting
    saturation: tuple[float, float]
    backdrop_clutter: tuple[int, int]  # unannotated distractors painted before the instances
    occluders: tuple[int, int]  # unannotated distractors in the instances' z-order
    blur_prob: float
    noise: tuple[float, float]  # camera sensor noise sigma


TARGET = World(
    name="target", classes=SYNTH_CLASSES, instance_textures=(0.3, 0.2, 0.15, 0.15, 0.2),
    background_textures=(0.15, 0.2, 0.15, 0.2, 0.3), lighting=(0.1, 0.5), saturation=(0.0, 1.0),
    backdrop_clutter=(3, 11), occluders=(0, 3), blur_prob=0.25, noise=(0.003, 0.035),
)
SOURCE = World(
    name="source", classes=SOURCE_CLASSES, instance_textures=(0.6, 0.05, 0.0, 0.0, 0.35),
    background_textures=(0.6, 0.0, 0.0, 0.0, 0.4), lighting=(0.0, 0.15), saturation=(0.45, 1.0),
    backdrop_clutter=(0, 3), occluders=(0, 2), blur_prob=0.0, noise=(0.0, 0.01),
)
WORLDS = {world.name: world for world in (TARGET, SOURCE)}


@dataclass(frozen=True)
class _Layer:
    """A rasterised shape: signed distances ``sd (h, w)`` and paint ``fill (h, w, 3)`` at ``(y0, x0)``;
    ``category`` is ``None`` for an unannotated distractor."""

    y0: int
    x0: int
    sd: np.ndarray
    fill: np.ndarray
    category: int | None

    @property
    def window(self) -> tuple[slice, slice]:
        h, w = self.sd.shape
        return slice(self.y0, self.y0 + h), slice(self.x0, self.x0 + w)


def _log_uniform(rng: np.random.Generator, low: float, high: float, bias: float = 1.0) -> float:
    """A size between ``low`` and ``high``, log-uniform for ``bias == 1``; ``bias < 1`` favours large."""
    return float(low * (high / low) ** (rng.random() ** bias))


def _fill(
    rng: np.random.Generator, canvas: np.ndarray, y0: int, x0: int, hw: tuple[int, int], world: World
) -> np.ndarray:
    """A random texture whose base colour stands out from the backdrop under the box (the best of a
    few tries), so every instance is visible, if sometimes only just."""
    local = canvas[y0 : y0 + hw[0], x0 : x0 + hw[1]].reshape(-1, 3).mean(0)
    best, best_gap = None, -1.0
    for _ in range(6):
        colour = draw.random_colour(rng, world.saturation)
        gap = float(np.linalg.norm(colour - local))
        if gap > best_gap:
            best, best_gap = colour, gap
        if gap >= MIN_CONTRAST:
            break
    second = (draw.random_colour(rng, world.saturation) if rng.random() < 0.5
              else np.clip(best * rng.uniform(0.4, 1.6), 0, 1))
    kind = str(rng.choice(draw.TEXTURES, p=list(world.instance_textures)))
    return draw.texture(kind, (y0, x0, *hw), best, second.astype(np.float32), rng)


def _instance(
    rng: np.random.Generator, canvas: np.ndarray, anchors: list[tuple[float, float, float]], world: World
) -> _Layer:
    """One annotated shape; many are placed against an earlier one to force overlaps."""
    height, width = canvas.shape[:2]
    category = int(rng.integers(len(world.classes)))
    size = _log_uniform(rng, MIN_SIZE_PX, MAX_SIZE_FRACTION * min(height, width), SIZE_BIAS)
    shape, radius = draw.class_shape(world.classes[category], size, rng)
    if anchors and rng.random() < 0.45:
        ax, ay, ar = anchors[int(rng.integers(len(anchors)))]
        cx, cy = ax + rng.normal(0, 0.8 * ar), ay + rng.normal(0, 0.8 * ar)
    else:
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    cx, cy = float(np.clip(cx, 0, width - 1)), float(np.clip(cy, 0, height - 1))
    anchors.append((cx, cy, radius))
    y0, x0, sd = draw.rasterise(shape, radius, (cx, cy), rng.uniform(0, 2 * np.pi), (height, width))
    return _Layer(y0, x0, sd, _fill(rng, canvas, y0, x0, sd.shape, world), category)


def _distractor(
    rng: np.random.Generator, canvas: np.ndarray, world: World, *, faint_ok: bool
) -> tuple[_Layer, float] | None:
    """An unannotated shape and its opacity: a lumpy blob, a line or scribble, or (only when
    ``faint_ok``, i.e. in the backdrop) a faint cut-off piece of a class shape."""
    height, width = canvas.shape[:2]
    side = min(height, width)
    kind = int(rng.integers(3 if faint_ok else 2))
    if kind == 0:
        (shape, radius), alpha = draw.blob_shape(_log_uniform(rng, 8, 0.35 * side), rng), 1.0
    elif kind == 1:
        (shape, radius), alpha = draw.stroke_shape(rng.uniform(15, 0.7 * width), rng), rng.uniform(0.6, 1.0)
    else:
        name = world.classes[int(rng.integers(len(world.classes)))]
        # faint enough (alpha * colour gap) to read as a stain, never as a low-contrast instance
        (shape, radius) = draw.fragment_shape(name, rng.uniform(16, 0.4 * side), rng)
        alpha = rng.uniform(0.1, 0.22)
    centre = (rng.uniform(0, width), rng.uniform(0, height))
    raster = draw.rasterise(shape, radius, centre, rng.uniform(0, 2 * np.pi), (height, width))
    if raster is None:
        return None
    y0, x0, sd = raster
    return _Layer(y0, x0, sd, _fill(rng, canvas, y0, x0, sd.shape, world), None), alpha


def _resolve_occlusion(
    layers: list[_Layer], image_hw: tuple[int, int]
) -> list[tuple[_Layer, np.ndarray | None]]:
    """Walk the z-order top-down, dropping instances that end up mostly hidden.

    Dropping a layer only uncovers the layers below it, which are decided later, so every kept
    instance's mask is exact for the final scene. Returns the kept layers bottom-to-top, each with
    its visible mask (bool ``(H, W)``; ``None`` for distractors).
    """
    covered = np.zeros(image_hw, bool)
    kept: list[tuple[_Layer, np.ndarray | None]] = []
    for layer in reversed(layers):
        hard = layer.sd < 0
        mask = None
        if layer.category is not None:
            visible = hard & ~covered[layer.window]
            shown = int(visible.sum())
            if shown < MIN_VISIBLE_PX or shown < MIN_VISIBLE_FRACTION * int(hard.sum()):
                continue
            mask = np.zeros(image_hw, bool)
            mask[layer.window] = visible
        covered[layer.window] |= hard
        kept.append((layer, mask))
    return kept[::-1]


def render_scene(
    rng: np.random.Generator, image_hw: tuple[int, int], world: World = TARGET
) -> tuple[np.ndarray, Instances]:
    """Draw one image of ``world``: uint8 ``(H, W, 3)`` RGB and its visible-part instances (labels
    index ``world.classes``)."""
    canvas = draw.background(*image_hw, rng, textures=world.background_textures, lighting=world.lighting,
                             saturation=world.saturation)
    for _ in range(int(rng.integers(*world.backdrop_clutter))):
        drawn = _distractor(rng, canvas, world, faint_ok=True)
        if drawn is not None:
            layer, alpha = drawn
            draw.paint(canvas, layer.y0, layer.x0, layer.sd, layer.fill, alpha)
    anchors: list[tuple[float, float, float]] = []
    layers = [_instance(rng, canvas, anchors, world) for _ in range(int(rng.integers(2, 9)))]
    occluders = (_distractor(rng, canvas, world, faint_ok=False) for _ in range(int(rng.integers(*world.occluders))))
    layers += [drawn[0] for drawn in occluders if drawn is not None]
    layers = [layers[i] for i in rng.permutation(len(layers))]
    masks, labels = [], []
    for layer, mask in _resolve_occlusion(layers, image_hw):
        draw.paint(canvas, layer.y0, layer.x0, layer.sd, layer.fill)
        if mask is not None:
            masks.append(mask)
            labels.append(layer.category)
    image = draw.camera(canvas, rng, blur_prob=world.blur_prob, noise=world.noise)
    if not masks:
        return image, Instances.empty(image_hw)
    return image, Instances(image_hw, np.stack(masks), np.array(labels, np.int64))
