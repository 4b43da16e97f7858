"""Host-side preprocess / postprocess: geometry, exactness against torch, selection, COCO results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sskd_deploy.data.records import CategorySet
from sskd_deploy.evaluation.postprocess import (
    bilinear_axis,
    instances_to_coco_results,
    postprocess,
    postprocess_batch,
)
from sskd_deploy.preprocess import (
    PreprocessInfo,
    fit_geometry,
    preprocess_batch,
    preprocess_image,
    resize_masks_for_input,
)
from sskd_deploy.structures import rles_to_masks



@pytest.mark.parametrize(
    ("original", "input_size", "resized"),
    [((100, 200), (64, 64), (32, 64)), ((480, 640), (256, 320), (240, 320)),
     ((37, 53), (128, 96), (67, 96)), ((64, 64), (64, 64), (64, 64)),
     ((1, 1000), (64, 64), (1, 64)), ((1024, 2048), (512, 1024), (512, 1024))],
)
def test_fit_geometry(original, input_size, resized) -> None:
    info = fit_geometry(original, input_size)
    assert info.resized_size == resized and info.input_size == input_size
    assert info.scale == pytest.approx(min(input_size[0] / original[0], input_size[1] / original[1]))
    # each side is rounded to the nearest pixel, but never below one
    assert all(abs(r - o * info.scale) <= 0.5 + 1e-9 or r == 1 for r, o in zip(resized, original))


def test_preprocess_image_resizes_with_pillow_and_pads_with_zeros() -> None:
    image = rng().integers(0, 256, (100, 150, 3), dtype=np.uint8)
    out, info = preprocess_image(image, (64, 80))
    assert out.shape == (3, 64, 80) and out.dtype == np.uint8
    assert info == PreprocessInfo((100, 150), (53, 80), (64, 80), 80 / 150)
    expected = np.asarray(Image.fromarray(image).resize((80, 53), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out[:, :53, :].transpose(1, 2, 0), expected)
    assert not out[:, 53:, :].any()
    same, same_info = preprocess_image(image, (100, 150))
    np.testing.assert_array_equal(same.transpose(1, 2, 0), image)
    assert same_info.scale == 1.0


@pytest.mark.parametrize(
    "bad", [np.zeros((10, 10, 3), np.float32), np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8),
            np.zeros((0, 10, 3), np.uint8)]
)
def test_preprocess_rejects_bad_images(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
        preprocess_image(bad, (32, 32))


def test_preprocess_rejects_bad_input_size() -> None:
    with pytest.raises(ValueError, match="input_size"):
        preprocess_image(np.zeros((8, 8, 3), np.uint8), (32, 0))


def test_preprocess_batch() -> None:
    images = [rng().integers(0, 256, shape, dtype=np.uint8) for shape in ((40, 60, 3), (90, 30, 3))]
    batch, infos = preprocess_batch(images, (48, 48))
    assert batch.shape == (2, 3, 48, 48) and [i.resized_size for i in infos] == [(32, 48), (48, 16)]
    for image, row in zip(images, batch):
        np.testing.assert_array_equal(row, preprocess_image(image, (48, 48))[0])
    empty, no_infos = preprocess_batch([], (48, 48))
    assert empty.shape == (0, 3, 48, 48) and no_infos == []


@pytest.mark.parametrize(
    ("original", "input_size"), [((100, 200), (64, 64)), ((37, 53), (128, 96)), ((33, 17), (64, 64))]
)
def test_resize_masks_for_input_is_pillow_nearest(original, input_size) -> None:
    masks = rng().random((3, *original)) < 0.4
    info = fit_geometry(original, input_size)
    out = resize_masks_for_input(masks, info)
    rh, rw = info.resized_size
    assert out.shape == (3, *input_size) and out.dtype == bool
    for mask, got in zip(masks, out):
        pil = Image.fromarray(mask.astype(np.uint8)).resize((rw, rh), Image.Resampling.NEAREST)
        np.testing.assert_array_equal(got[:rh, :rw], np.asarray(pil).astype(bool))
    assert not out[:, rh:].any() and not out[:, :, rw:].any()
    with pytest.raises(ValueError, match="masks must be"):
        resize_masks_for_input(masks[:, 1:], info)


@pytest.mark.parametrize(("n_in", "n_out"), [(7, 28), (16, 64), (5, 13), (9, 9), (64, 1024), (12, 5)])
def test_bilinear_axis_equals_torch_interpolate(n_in: int, n_out: int) -> None:
    grid = rng().normal(size=(4, n_in, n_in + 3))
    ry = bilinear_axis(n_out, n_in, n_in / n_out)
    rx = bilinear_axis(n_out + 5, n_in + 3, (n_in + 3) / (n_out + 5))
    mine = ry.matrix @ grid.astype(np.float32) @ rx.matrix.T
    # float64 reference: in float32 torch's own source coordinates drift by ~1e-5 at 1000 pixels
    size = (n_out, n_out + 5)
    ref = F.interpolate(torch.from_numpy(grid)[None], size, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(mine, ref[0].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ry.matrix.sum(axis=1), 1.0, atol=1e-6)
    assert (np.diff(ry.lo) >= 0).all() and (np.diff(ry.hi) >= 0).all() and (ry.hi - ry.lo <= 1).all()


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def smooth_logits(k: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """float32 (k, h, w) spatially correlated logits, so masks have blobs rather than salt."""
    noise = torch.from_numpy(rng(seed).normal(size=(1, k, h, w)).astype(np.float32))
    return (F.avg_pool2d(noise, 5, 1, 2, count_include_pad=False)[0] * 4).numpy()


@pytest.mark.parametrize(
    ("original", "input_size"), [((300, 500), (256, 320)), ((512, 384), (128, 128)), ((90, 70), (256, 256))]
)
def test_postprocess_agrees_with_torch_two_step_resample(original, input_size) -> None:
    info = fit_geometry(original, input_size)
    logits = smooth_logits(6, input_size[0] // 4, input_size[1] // 4)
    inst = postprocess(np.ones(6), np.arange(6), logits, info)
    rh, rw = info.resized_size
    up = F.interpolate(torch.from_numpy(logits)[None], size=input_size, mode="bilinear", align_corners=False)
    ref = F.interpolate(up[:, :, :rh, :rw], size=original, mode="bilinear", align_corners=False)
    ref = ref[0].numpy() > 0
    assert inst.masks.shape == (6, *original)
    assert 0.2 < inst.masks.mean() < 0.8
    assert (inst.masks != ref).mean() < 0.01  # two resamples vs one: only boundary pixels differ


def test_postprocess_geometry_is_exact() -> None:
    # 100x200 into 64x64: resized 32x64, scale 0.32, stride-4 grid 16x16. A band of positive grid
    # rows 2..3 has its 0-crossings at grid edges 2 and 4 -> input rows 8..16 -> original 25..50.
    info = fit_geometry((100, 200), (64, 64))
    logits = np.full((2, 16, 16), -1.0, np.float32)
    logits[0, 2:4, :] = 1.0
    logits[1, :, 4:8] = 1.0  # input columns 16..32 -> original 50..100
    inst = postprocess(np.ones(2), np.zeros(2, np.int64), logits, info)
    assert np.flatnonzero(inst.masks[0].any(axis=1)).tolist() == list(range(25, 50))
    assert inst.masks[0, 25:50].all()
    assert np.flatnonzero(inst.masks[1].any(axis=0)).tolist() == list(range(50, 100))
    assert inst.masks[1, :, 50:100].all()


def test_cropped_resample_equals_dense_resample() -> None:
    info = fit_geometry((123, 257), (96, 128))
    logits = smooth_logits(20, 24, 32) - 2.0  # blobs of all sizes; at threshold 1.3 nearly all empty
    for threshold in (0.0, -0.7, 1.3):
        inst = postprocess(np.ones(20), np.zeros(20, np.int64), logits, info, mask_threshold=threshold)
        sy, sx = info.axis_scales
        ry, rx = bilinear_axis(123, 24, sy / 4), bilinear_axis(257, 32, sx / 4)
        dense = ry.matrix @ (logits - np.float32(threshold)) @ rx.matrix.T > 0
        np.testing.assert_array_equal(inst.masks, dense)


def test_positive_logits_only_in_padding_give_empty_mask() -> None:
    info = fit_geometry((50, 100), (64, 64))  # resized 32x64: grid rows 8..15 are padding
    logits = np.full((1, 16, 16), -5.0, np.float32)
    logits[0, 10:, :] = 5.0
    assert not postprocess(np.ones(1), np.zeros(1, np.int64), logits, info).masks.any()


def test_postprocess_selection() -> None:
    info = fit_geometry((40, 40), (32, 32))
    scores = np.array([0.2, 0.9, 0.5, 0.05, 0.9, 0.7], np.float32)
    labels = np.arange(6)
    logits = smooth_logits(6, 8, 8)
    inst = postprocess(scores, labels, logits, info, score_threshold=0.1, max_detections=4)
    assert inst.labels.tolist() == [1, 4, 5, 2]
    assert inst.scores.tolist() == pytest.approx([0.9, 0.9, 0.7, 0.5])
    alone = postprocess(scores[5:], labels[5:], logits[5:], info)
    np.testing.assert_array_equal(inst.masks[2], alone.masks[0])
    assert len(postprocess(scores, labels, logits, info, score_threshold=0.95)) == 0
    assert len(postprocess(scores, labels, logits, info, max_detections=0)) == 0
    assert postprocess(scores, labels, logits, info).image_size == (40, 40)


@pytest.mark.parametrize(
    ("scores", "labels", "logits", "match"),
    [(np.ones(3), np.zeros(2, np.int64), np.zeros((3, 8, 8)), "expected scores"),
     (np.ones(3), np.zeros(3), np.zeros((3, 8, 8)), "integer labels"),
     (np.ones(3), np.zeros(3, np.int64), np.zeros((3, 7, 8)), "does not divide"),
     (np.array([1.0, np.nan, 0.0]), np.zeros(3, np.int64), np.zeros((3, 8, 8)), "scores contain NaN"),
     (np.ones(3), np.zeros(3, np.int64), np.full((3, 8, 8), np.inf), "mask_logits of the kept")],
)
def test_postprocess_rejects_bad_outputs(scores, labels, logits, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        postprocess(scores, labels, logits, fit_geometry((40, 40), (32, 32)))


def test_postprocess_batch_matches_single() -> None:
    infos = [fit_geometry((40, 60), (32, 32)), fit_geometry((70, 20), (32, 32))]
    scores, labels = rng().random((2, 5)), rng().integers(0, 3, (2, 5))
    logits = smooth_logits(10, 8, 8).reshape(2, 5, 8, 8)
    batch = postprocess_batch(scores, labels, logits, infos, score_threshold=0.3)
    for i, inst in enumerate(batch):
        single = postprocess(scores[i], labels[i], logits[i], infos[i], score_threshold=0.3)
        assert inst.image_size == infos[i].original_size
        np.testing.assert_array_equal(inst.masks, single.masks)
        np.testing.assert_array_equal(inst.labels, single.labels)
    with pytest.raises(ValueError, match="batch of 1 infos"):
        postprocess_batch(scores, labels, logits, infos[:1])


def test_instances_to_coco_results() -> None:
    categories = CategorySet(("car", "person"), (3, 17))
    info = fit_geometry((30, 50), (32, 32))
    inst = postprocess(np.array([0.25, 0.75]), np.array([1, 0]), smooth_logits(2, 8, 8), info)
    results = instances_to_coco_results(inst, 42, categories)
    assert [(r["image_id"], r["category_id"], r["score"]) for r in results] == [(42, 3, 0.75), (42, 17, 0.25)]
    for r, mask in zip(results, inst.masks):
        assert isinstance(r["segmentation"]["counts"], str) and r["segmentation"]["size"] == [30, 50]
        np.testing.assert_array_equal(rles_to_masks([r["segmentation"]], 30, 50)[0], mask)
        ys, xs = np.nonzero(mask)
        assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    bad = postprocess(np.ones(1), np.array([2]), smooth_logits(1, 8, 8), info)
    with pytest.raises(ValueError, match="out of range"):
        instances_to_coco_results(bad, 1, categories)
