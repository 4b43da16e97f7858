"""Weak/strong views: one geometry for image and masks, photometry-only strong view."""

from __future__ import annotations

import colorsys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation, binary_erosion

from sskd_deploy.data.augment import (
    StrongAugment,
    ViewGeometry,
    WeakAugment,
    apply_geometry,
    copy_paste,
    hsv_to_rgb,
    make_views,
    rgb_to_hsv,
)

RED, GREEN = (255, 0, 0), (0, 255, 0)
NO_STRONG = StrongAugment(brightness=0, contrast=0, saturation=0, hue=0, grayscale_prob=0, blur_prob=0)


def squares_scene(height: int = 90, width: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """Black image with a red and a green rectangle; masks (2, H, W) bool in that order."""
    image = np.zeros((height, width, 3), np.uint8)
    masks = np.zeros((2, height, width), bool)
    masks[0, 30:60, 40:80] = True
    masks[1, 5:25, 90:115] = True
    image[masks[0]], image[masks[1]] = RED, GREEN
    return image, masks


@pytest.mark.parametrize("seed", range(12))
def test_weak_mask_covers_exactly_the_coloured_pixels(seed: int) -> None:
    image, masks = squares_scene()
    weak = WeakAugment((64, 72), scale_range=(0.5, 2.5))
    view, view_masks, keep, valid = weak(image, masks, np.random.default_rng(seed))
    assert view.shape == (64, 72, 3) and view.dtype == np.uint8
    assert view_masks.shape == (2, 64, 72) and view_masks.dtype == np.bool_
    np.testing.assert_array_equal(keep, view_masks.any(axis=(1, 2)))
    for colour, mask in zip((RED, GREEN), view_masks):
        pure = (view == colour).all(axis=-1)
        mostly = view[..., int(np.argmax(colour))] >= 128  # past the half-level of the bilinear edge
        border = binary_dilation(mask) & ~binary_erosion(mask, border_value=1)
        assert not (pure & ~mask).any(), "pure colour outside its mask"
        assert not ((mostly ^ mask) & ~border).any(), "mask and colour disagree beyond a 1-pixel border"
        # the square may end just past the view edge, so the view edge counts as a boundary here
        assert not (binary_erosion(mask, iterations=2) & ~pure).any(), "mask interior impure"
        assert not (mask & ~valid).any()


def test_geometry_maps_points_both_ways_and_matches_mask_box() -> None:
    image, masks = squares_scene()
    geometry = ViewGeometry((90, 120), (135, 180), (20, 30), (80, 100), flip=True)
    _, view_masks, keep, _ = apply_geometry(image, masks, geometry)
    assert keep.tolist() == [True, True]
    corners = geometry.to_view(np.array([[40.0, 30.0], [80.0, 60.0]]))  # red box (x, y) corners
    ys, xs = np.nonzero(view_masks[0])
    assert abs(min(corners[:, 0]) - xs.min()) <= 1 and abs(max(corners[:, 0]) - (xs.max() + 1)) <= 1
    assert abs(corners[:, 1].min() - ys.min()) <= 1 and abs(corners[:, 1].max() - (ys.max() + 1)) <= 1
    points = np.random.default_rng(0).uniform(0, 90, size=(50, 2))
    np.testing.assert_allclose(geometry.to_input(geometry.to_view(points)), points, atol=1e-9)


def test_source_indices_agree_with_point_mapping() -> None:
    geometry = WeakAugment((48, 64), scale_range=(0.7, 1.9)).sample(57, 83, np.random.default_rng(3))
    rows, cols = geometry.source_indices()
    ho, wo = geometry.output_size
    centres = np.stack(np.meshgrid(np.arange(wo) + 0.5, np.arange(ho) + 0.5), axis=-1)
    src = np.floor(geometry.to_input(centres) + 1e-9).astype(int)
    valid = geometry.valid()
    np.testing.assert_array_equal(src[..., 0][valid], np.broadcast_to(cols[None, :], (ho, wo))[valid])
    np.testing.assert_array_equal(src[..., 1][valid], np.broadcast_to(rows[:, None], (ho, wo))[valid])


def test_box_resize_equals_full_resize_then_crop() -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (70, 110, 3), dtype=np.uint8)
    geometry = ViewGeometry((70, 110), (95, 149), (11, 23), (60, 80), flip=True)
    view, _, _, _ = apply_geometry(image, np.zeros((0, 70, 110), bool), geometry)
    full = np.asarray(Image.fromarray(image).resize((149, 95), Image.Resampling.BILINEAR))[:, ::-1]
    diff = np.abs(view.astype(int) - full[11:71, 23:103].astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.1  # Pillow's fixed-point rounding, not a shift


def test_flip_is_a_mirror_of_the_unflipped_view() -> None:
    image, masks = squares_scene()
    plain = ViewGeometry((90, 120), (108, 144), (7, 13), (64, 96), flip=False)
    # The mirrored crop of the mirrored image starts at the opposite offset.
    mirrored = replace(plain, flip=True, crop_origin=(7, 144 - 96 - 13))
    a_img, a_masks, _, _ = apply_geometry(image, masks, plain)
    b_img, b_masks, _, _ = apply_geometry(image, masks, mirrored)
    np.testing.assert_array_equal(b_masks, a_masks[:, :, ::-1])
    assert np.abs(b_img.astype(int) - a_img[:, ::-1].astype(int)).max() <= 1


def test_hflip_prob_one_mirrors_when_no_crop() -> None:
    image, masks = squares_scene(60, 80)
    outputs = []
    for prob in (0.0, 1.0):
        weak = WeakAugment((60, 80), scale_range=(1.0, 1.0), hflip_prob=prob)
        outputs.append(weak(image, masks, np.random.default_rng(1)))
    np.testing.assert_array_equal(outputs[1][0], outputs[0][0][:, ::-1])
    np.testing.assert_array_equal(outputs[1][1], outputs[0][1][:, :, ::-1])


def test_small_image_is_padded_bottom_right() -> None:
    image, masks = squares_scene(30, 40)
    weak = WeakAugment((64, 64), scale_range=(1.0, 1.0), hflip_prob=0.0, pad_value=114)
    view, view_masks, keep, valid = weak(image, masks, np.random.default_rng(0))
    # fit scale = min(64/30, 64/40) = 1.6 -> resized (48, 64): 16 padded rows at the bottom
    assert valid[:48].all() and not valid[48:].any()
    assert (view[48:] == 114).all() and not view_masks[:, 48:].any()


def test_keep_flags_a_cropped_away_instance() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    masks = np.zeros((2, 100, 100), bool)
    masks[0, 5:20, 5:20] = True
    masks[1, 80:95, 80:95] = True
    geometry = ViewGeometry((100, 100), (100, 100), (0, 0), (50, 50), flip=False)
    _, view_masks, keep, valid = apply_geometry(image, masks, geometry)
    assert keep.tolist() == [True, False]
    assert not view_masks[1].any() and view_masks[0].sum() == 15 * 15 and valid.all()


def test_weak_view_is_deterministic_per_seed() -> None:
    image, masks = squares_scene()
    weak, strong = WeakAugment((64, 64)), StrongAugment()
    first = make_views(image, masks, weak, strong, np.random.default_rng(42))
    second = make_views(image, masks, weak, strong, np.random.default_rng(42))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    others = [make_views(image, masks, weak, strong, np.random.default_rng(s))[1] for s in range(5)]
    assert any(not np.array_equal(first[1], o) for o in others)


def test_strong_without_blur_is_a_per_pixel_colour_function() -> None:
    rng = np.random.default_rng(7)
    palette = rng.integers(0, 256, (6, 3), dtype=np.uint8)
    image = palette[rng.integers(0, 6, (40, 50))]
    strong = StrongAugment(blur_prob=0.0, grayscale_prob=0.0)
    for seed in range(5):
        out = strong(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8
        for colour in palette:
            same = (image == colour).all(axis=-1)
            assert len(np.unique(out[same], axis=0)) == 1


def test_blur_keeps_edges_in_place() -> None:
    image = np.zeros((32, 40, 3), np.uint8)
    image[:, 17:] = 200
    blur_only = StrongAugment(brightness=0, contrast=0, saturation=0, hue=0, grayscale_prob=0, blur_prob=1.0)
    out = blur_only(image, np.random.default_rng(0)).astype(int)
    assert not np.array_equal(out, image)
    row = out[16, :, 0]
    assert row[16] < 100 <= row[17]  # the half-level crossing stays between columns 16 and 17
    assert (np.diff(row) >= 0).all()


def test_grayscale_makes_channels_equal() -> None:
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    gray = StrongAugment(grayscale_prob=1.0, blur_prob=0.0)(image, np.random.default_rng(1))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_contrast_mean_ignores_padding() -> None:
    image = np.zeros((20, 20, 3), np.uint8)
    image[:10] = 128
    valid = np.zeros((20, 20), bool)
    valid[:10] = True
    contrast_only = replace(NO_STRONG, contrast=0.4)
    for seed in range(3):
        out = contrast_only(image, np.random.default_rng(seed), valid)
        assert (out[:10] == 128).all()  # the scene is its own mean gray: contrast cannot move it
    assert not (contrast_only(image, np.random.default_rng(0))[:10] == 128).all()


def test_strong_view_keeps_weak_geometry() -> None:
    image, masks = squares_scene()
    views = make_views(image, masks, WeakAugment((64, 64)), NO_STRONG, np.random.default_rng(2))
    weak_img, strong_img = views[0], views[1]
    np.testing.assert_array_equal(weak_img, strong_img)


def test_hsv_matches_colorsys_and_round_trips() -> None:
    rgb = np.random.default_rng(0).random((200, 3)).astype(np.float32)
    expected = np.array([colorsys.rgb_to_hsv(*p) for p in rgb.tolist()])
    np.testing.assert_allclose(rgb_to_hsv(rgb), expected, atol=1e-5)
    np.testing.assert_allclose(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-5)


@pytest.mark.parametrize(
    "image, masks, match",
    [
        (np.zeros((8, 8, 3), np.float32), np.zeros((0, 8, 8), bool), "uint8"),
        (np.zeros((8, 8), np.uint8), np.zeros((0, 8, 8), bool), r"\(H, W, 3\)"),
        (np.zeros((8, 8, 4), np.uint8), np.zeros((0, 8, 8), bool), r"\(H, W, 3\)"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 8), np.uint8), "bool"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 9), bool), r"\(N, 8, 8\)"),
    ],
)
def test_bad_arrays_are_rejected(image: np.ndarray, masks: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WeakAugment((4, 4))(image, masks, np.random.default_rng(0))


def test_bad_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="scale_range"):
        WeakAugment((4, 4), scale_range=(1.5, 0.5))
    with pytest.raises(ValueError, match="hflip_prob"):
        WeakAugment((4, 4), hflip_prob=2.0)
    with pytest.raises(ValueError, match="blur_sigma"):
        StrongAugment(blur_sigma=(0.0, 1.0))
    with pytest.raises(ValueError, match="uint8"):
        StrongAugment()(np.zeros((4, 4, 3)), np.random.default_rng(0))
    geometry = ViewGeometry((10, 10), (10, 10), (0, 0), (5, 5), flip=False)
    with pytest.raises(ValueError, match="input size"):
        apply_geometry(np.zeros((12, 10, 3), np.uint8), np.zeros((0, 12, 10), bool), geometry)


def test_copy_paste_puts_instances_on_top_and_keeps_masks_exact() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((20, 20, 3), np.uint8)
    masks = np.zeros((2, 20, 20), bool)
    masks[0, 2:10, 2:10] = True  # partly covered below: loses the pasted pixels
    masks[1, 12:16, 12:16] = True  # fully covered: dropped (fewer than min_pixels left)
    image[masks[0]], image[masks[1]] = 50, 60
    src = np.full((20, 20, 3), 200, np.uint8)
    src_masks = np.zeros((1, 20, 20), bool)
    src_masks[0, 6:18, 6:18] = True
    valid = np.ones((20, 20), bool)
    out, new_masks, labels = copy_paste(image, masks, np.array([3, 4]), valid, (src, src_masks, np.array([1]), valid),
                                        rng, keep_fraction=1.0, min_pixels=4)
    assert labels.tolist() == [3, 1] and new_masks.shape == (2, 20, 20)
    assert (out[src_masks[0]] == 200).all() and (out[~src_masks[0]] == image[~src_masks[0]]).all()
    assert not (new_masks[0] & new_masks[1]).any()
    assert new_masks[0].sum() == 64 - 16 and (new_masks[1] == src_masks[0]).all()
    assert image[3, 3, 0] == 50  # the input is not modified


def test_copy_paste_without_source_instances_changes_nothing() -> None:
    image, masks = np.zeros((8, 8, 3), np.uint8), np.ones((1, 8, 8), bool)
    valid = np.ones((8, 8), bool)
    out, out_masks, labels = copy_paste(image, masks, np.array([0]), valid,
                                        (image, np.zeros((0, 8, 8), bool), np.zeros(0, np.int64), valid),
                                        np.random.default_rng(0))
    assert out is image and out_masks is masks and labels.tolist() == [0]
