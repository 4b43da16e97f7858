"""L_pxl: loss floor, stop-gradient, negative sampling (weights, variants, draws), diagnostics, schedule."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from sskd_deploy.config.model import PRESETS
from sskd_deploy.models.maskformer import build_model
from sskd_deploy.training.contrastive import (
    PixelContrast,
    info_nce,
    negative_weights,
    sample_negatives,
    sampling_embedding,
    temperature_at,
)
from sskd_deploy.training.negatives import _mask_logits_on_grid


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def one_hot_features(batch: int, h: int, w: int) -> torch.Tensor:
    """``(B, P, h, w)`` features, P = B*h*w, where every pixel is its own basis vector (all orthogonal)."""
    n = batch * h * w
    return torch.eye(n).reshape(batch, h, w, n).permute(0, 3, 1, 2).contiguous()


def identity_contrast(**kwargs) -> PixelContrast:
    """A PixelContrast whose projection heads pass features through, so embeddings are chosen by the test."""
    pxl = PixelContrast(in_channels=4, hidden_dim=4, embed_dim=4, **kwargs)
    pxl.weak_head, pxl.strong_head = nn.Identity(), nn.Identity()
    return pxl


def random_predictions(batch: int, k: int, classes: int, size: tuple[int, int], seed: int = 0):
    g = seeded(seed)
    return torch.randn(batch, k, classes + 1, generator=g), torch.randn(batch, k, *size, generator=g)


def hard_partition_predictions(regions: torch.Tensor, classes: int = 2):
    """Predictions whose query ``k`` owns exactly the pixels where ``regions == k``: ``(B, K, C+1), (B, K, h, w)``."""
    k = int(regions.max()) + 1
    masks = torch.where(regions[:, None] == torch.arange(k)[None, :, None, None], 20.0, -20.0)
    logits = torch.zeros(regions.shape[0], k, classes + 1)
    logits[:, torch.arange(k), torch.arange(k) % (classes + 1)] = 10.0
    return logits, masks


# --- the loss ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.07, 0.3, 1.0])
def test_info_nce_floor_with_identical_views_and_orthogonal_negatives(temperature: float) -> None:
    eye = torch.eye(8)
    anchor, pool = eye[:3], eye
    index = torch.tensor([[3, 4, 5, 6], [0, 2, 5, 7], [0, 1, 3, 4]])
    loss, pos, neg = info_nce(anchor, anchor, pool, index, torch.ones(3, 4, dtype=torch.bool), temperature)
    floor = math.log(1 + 4 * math.exp(0.0) / math.exp(1.0 / temperature))
    assert torch.allclose(loss, torch.full((3,), floor), rtol=1e-5, atol=1e-7)
    assert torch.equal(pos, torch.ones(3)) and torch.equal(neg, torch.zeros(3, 4))


def test_info_nce_drops_invalid_draws() -> None:
    eye = torch.eye(4)
    index = torch.tensor([[1, 0, 0]])
    valid = torch.tensor([[True, False, False]])  # the two "0" entries would be the anchor itself
    loss, _, _ = info_nce(eye[:1], eye[:1], eye, index, valid, 0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-6)


@pytest.mark.parametrize(("num_negatives", "drawn"), [(5, 5), (11, 11), (20, 11)])
def test_pixel_contrast_floor_end_to_end(num_negatives: int, drawn: int) -> None:
    feats = one_hot_features(2, 2, 3)  # 12 pixels: 11 candidates per anchor
    logits, masks = random_predictions(2, 3, 2, (8, 12))
    pxl = identity_contrast(num_negatives=num_negatives, sampling="uniform", max_anchors=None)
    loss, diag = pxl(feats, feats.clone(), logits, masks, temperature=0.1, generator=seeded())
    assert loss.item() == pytest.approx(math.log(1 + drawn * math.exp(-1 / 0.1)), rel=1e-5)
    assert diag["positive_sim"] == pytest.approx(1.0) and diag["negative_sim"] == pytest.approx(0.0, abs=1e-7)
    assert diag["margin"] == pytest.approx(1.0)
    assert math.isnan(diag["false_negative_rate"])
    assert all(type(v) is float for v in diag.values())


@pytest.mark.parametrize("strong_head", ["shared", "ema"])
def test_gradient_flows_only_through_the_weak_branch(strong_head: str) -> None:
    torch.manual_seed(0)
    pxl = PixelContrast(in_channels=6, hidden_dim=8, embed_dim=5, num_negatives=4, max_anchors=None,
                        strong_head=strong_head)
    feat_weak = torch.randn(2, 6, 3, 4, requires_grad=True)
    feat_strong = torch.randn(2, 6, 3, 4, requires_grad=True)
    logits, masks = random_predictions(2, 3, 2, (12, 16))
    logits.requires_grad_(True), masks.requires_grad_(True)
    loss, _ = pxl(feat_weak, feat_strong, logits, masks, temperature=0.2, generator=seeded())
    loss.backward()
    assert feat_weak.grad is not None and feat_weak.grad.abs().sum() > 0
    assert feat_strong.grad is None and logits.grad is None and masks.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pxl.weak_head.parameters())
    assert {n.split(".")[0] for n, p in pxl.named_parameters() if p.requires_grad} == {"weak_head"}


def test_shared_strong_branch_follows_the_weak_head() -> None:
    """The stop-gradient target lives in the weak head's current embedding space (not a frozen random one)."""
    torch.manual_seed(0)
    pxl = PixelContrast(in_channels=6, hidden_dim=8, embed_dim=5)
    assert pxl.strong_head is None
    feats = torch.randn(1, 6, 3, 4)
    before = pxl.project_strong(feats)
    torch.testing.assert_close(before, pxl.weak_head(feats).detach())
    with torch.no_grad():
        for p in pxl.weak_head.parameters():
            p.add_(0.5)
    assert not torch.allclose(pxl.project_strong(feats), before)
    torch.testing.assert_close(pxl.project_strong(feats), pxl.weak_head(feats).detach())


def test_ema_strong_head_starts_as_the_weak_head_and_moves_towards_it() -> None:
    torch.manual_seed(0)
    pxl = PixelContrast(in_channels=6, hidden_dim=8, embed_dim=5, strong_head="ema", ema_momentum=0.9)
    weak, ema = pxl.weak_head.state_dict(), pxl.strong_head.state_dict()
    assert all(torch.equal(weak[k], ema[k]) and weak[k].data_ptr() != ema[k].data_ptr() for k in weak)
    with torch.no_grad():
        for p in pxl.weak_head.parameters():
            p.add_(1.0)
    start = {k: v.clone() for k, v in pxl.strong_head.state_dict().items()}
    pxl.project_strong(torch.randn(1, 6, 2, 2))  # training mode: one EMA update first
    for key, value in pxl.strong_head.state_dict().items():
        torch.testing.assert_close(value, 0.9 * start[key] + 0.1 * pxl.weak_head.state_dict()[key])
    frozen = {k: v.clone() for k, v in pxl.strong_head.state_dict().items()}
    pxl.eval().project_strong(torch.randn(1, 6, 2, 2))  # no update outside training
    assert all(torch.equal(frozen[k], v) for k, v in pxl.strong_head.state_dict().items())
    with pytest.raises(ValueError, match="strong_head"):
        PixelContrast(in_channels=6, strong_head="frozen")


def test_the_loss_trains_the_weak_head_towards_its_positive() -> None:
    torch.manual_seed(0)
    pxl = PixelContrast(in_channels=6, hidden_dim=16, embed_dim=8, num_negatives=8, sampling="uniform",
                        max_anchors=None)
    for p in pxl.weak_head.parameters():  # start away from the strong head
        nn.init.normal_(p, std=0.5)
    feats = torch.randn(1, 6, 3, 4)
    logits, masks = random_predictions(1, 2, 2, (3, 4))
    optimizer = torch.optim.Adam(pxl.parameters(), lr=0.05)
    first = None
    for step in range(40):
        loss, diag = pxl(feats, feats, logits, masks, temperature=0.2, generator=seeded(step))
        first = first if first is not None else (loss.item(), diag["margin"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first[0] and diag["margin"] > first[1]


# --- negative sampling ------------------------------------------------------------------------------


def test_fused_weights_match_a_hand_computation() -> None:
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]]])  # 2 queries, 2 classes + no-object
    masks = torch.tensor([[[[3.0, -1.0], [0.0, 2.0]], [[-2.0, 1.0], [0.0, 0.5]]]])  # (1, 2, 2, 2)
    lg, mk = logits[0].numpy().astype(np.float64), masks[0].reshape(2, 4).numpy().astype(np.float64)
    p_mask = np.exp(mk) / np.exp(mk).sum(axis=0, keepdims=True)  # softmax over queries, (K, P)
    p_class = np.exp(lg) / np.exp(lg).sum(axis=1, keepdims=True)  # (K, C+1)
    fused_class = p_mask.T @ p_class  # (P, C+1)
    y = np.concatenate([p_mask.T, fused_class], axis=1)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    expected = np.maximum(0.0, 1.0 - y @ y.T)
    expected[expected < 1e-6] = 0.0

    got_y = sampling_embedding(logits, masks, (2, 2), "fused")[0]
    assert np.allclose(got_y.numpy(), y, atol=1e-6)
    weights = negative_weights(got_y, got_y)
    assert np.allclose(weights.numpy(), expected, atol=1e-6)
    assert torch.equal(weights.diagonal(), torch.zeros(4))


def test_mask_and_class_variants_use_their_part_only() -> None:
    logits, masks = random_predictions(2, 3, 4, (4, 6), seed=3)
    fused = sampling_embedding(logits, masks, (4, 6), "fused")
    mask_only = sampling_embedding(logits, masks, (4, 6), "mask")
    class_only = sampling_embedding(logits, masks, (4, 6), "class")
    assert fused.shape == (2, 24, 3 + 5) and mask_only.shape == (2, 24, 3) and class_only.shape == (2, 24, 5)
    p_mask = masks.flatten(2).softmax(1).transpose(1, 2)
    expected_class = p_mask @ logits.softmax(-1)
    assert torch.allclose(mask_only, nn.functional.normalize(p_mask, dim=-1), atol=1e-6)
    assert torch.allclose(class_only, nn.functional.normalize(expected_class, dim=-1), atol=1e-6)
    # fused = the concatenation of the two raw parts, normalised once
    raw = torch.cat([p_mask, expected_class], -1)
    assert torch.allclose(fused, nn.functional.normalize(raw, dim=-1), atol=1e-6)
    # class-only cannot tell apart two queries that predict the same class; mask-only can
    same_class = torch.zeros(1, 2, 3)
    same_class[0, :, 0] = 10.0
    two_halves = torch.tensor([[[[20.0, -20.0]], [[-20.0, 20.0]]]])  # (1, 2, 1, 2)
    w_class = negative_weights(*[sampling_embedding(same_class, two_halves, (1, 2), "class")[0]] * 2)
    w_mask = negative_weights(*[sampling_embedding(same_class, two_halves, (1, 2), "mask")[0]] * 2)
    assert w_class[0, 1] == 0 and w_mask[0, 1] == pytest.approx(1.0)


def test_uniform_variant_weighs_every_pair_one() -> None:
    logits, masks = random_predictions(2, 3, 2, (4, 4))
    y = sampling_embedding(logits, masks, (2, 3), "uniform").flatten(0, 1)
    assert torch.equal(negative_weights(y, y), torch.ones(12, 12))


def test_unknown_variant_is_rejected() -> None:
    logits, masks = random_predictions(1, 2, 2, (4, 4))
    with pytest.raises(ValueError, match="sampling variant"):
        sampling_embedding(logits, masks, (2, 2), "random")
    with pytest.raises(ValueError, match="sampling"):
        PixelContrast(in_channels=4, sampling="hard")


def test_mask_predictions_are_read_at_the_patch_centres() -> None:
    # input 64 x 96, patch 14 -> a 4 x 6 grid covering rows 0..55; masks at stride 4 are 16 x 24
    rows = torch.arange(16, dtype=torch.float32)[:, None].expand(16, 24)
    cols = torch.arange(24, dtype=torch.float32)[None, :].expand(16, 24)
    ramps = torch.stack([rows, cols])[None]  # a linear map: bilinear sampling returns the position exactly
    sampled = _mask_logits_on_grid(ramps, (4, 6), patch_size=14, mask_stride=4)[0]
    # cell i is centred on image pixel 14 i + 7, i.e. mask-map index (14 i + 7) / 4 - 0.5
    expected_rows = (14 * torch.arange(4) + 7) / 4 - 0.5
    expected_cols = (14 * torch.arange(6) + 7) / 4 - 0.5
    assert torch.allclose(sampled[0], expected_rows[:, None].expand(4, 6), atol=1e-5)
    assert torch.allclose(sampled[1], expected_cols[None, :].expand(4, 6), atol=1e-5)


def test_zero_weight_candidates_are_never_drawn() -> None:
    g = seeded(1)
    weights = torch.rand(50, 30, generator=g)
    weights[torch.rand(50, 30, generator=g) < 0.6] = 0.0
    weights[0] = 0.0  # an anchor with no candidate at all
    positive = (weights > 0).sum(1)
    for seed in range(20):
        index, valid = sample_negatives(weights, 10, seeded(seed))
        assert index.shape == valid.shape == (50, 10)
        assert bool((torch.gather(weights, 1, index)[valid] > 0).all())
        assert torch.equal(valid.sum(1), positive.clamp(max=10))
        for row in range(50):  # without replacement
            assert index[row][valid[row]].unique().numel() == int(valid[row].sum())


def test_pool_smaller_than_num_pads_with_invalid_draws() -> None:
    index, valid = sample_negatives(torch.tensor([[0.5, 0.0, 1.0]]), 5, seeded())
    assert index.shape == (1, 5) and valid.tolist() == [[True, True, False, False, False]]
    assert set(index[0, :2].tolist()) == {0, 2}


def test_gumbel_top_k_draws_are_proportional_to_weight() -> None:
    probs = torch.tensor([0.1, 0.0, 0.2, 0.3, 0.4])
    draws = 4000
    index, valid = sample_negatives((probs * 7).expand(draws, 5).contiguous(), 1, seeded(7))
    assert bool(valid.all())
    freq = torch.bincount(index[:, 0], minlength=5).double() / draws
    # 4000 draws: the standard error is at most 0.008, so 0.03 is a ~4 sigma band
    assert torch.allclose(freq, probs.double(), atol=0.03), freq
    assert freq[1] == 0


# --- diagnostics, anchors, determinism --------------------------------------------------------------


def test_false_negative_rate_on_a_toy_case() -> None:
    feats = one_hot_features(1, 2, 2)
    logits, masks = random_predictions(1, 2, 2, (2, 2))
    ids = torch.tensor([[[1, 1], [2, -1]]])
    pxl = identity_contrast(num_negatives=3, sampling="uniform", max_anchors=None)  # draws every other pixel
    _, diag = pxl(feats, feats, logits, masks, temperature=0.1, instance_ids=ids, generator=seeded())
    # known pairs: 0-1 (same), 0-2, 1-0 (same), 1-2, 2-0, 2-1 -> 2 of 6 are false negatives
    assert diag["false_negative_rate"] == pytest.approx(1 / 3)
    _, diag = pxl(feats, feats, logits, masks, temperature=0.1, instance_ids=torch.full_like(ids, -1),
                  generator=seeded())
    assert math.isnan(diag["false_negative_rate"])


def test_same_instance_id_in_another_image_is_not_a_false_negative() -> None:
    feats = one_hot_features(2, 1, 2)
    logits, masks = random_predictions(2, 2, 2, (1, 2))
    ids = torch.ones(2, 1, 2, dtype=torch.long)  # every pixel is "instance 1" of its own image
    pxl = identity_contrast(num_negatives=3, sampling="uniform", max_anchors=None)  # draws every other pixel
    _, diag = pxl(feats, feats, logits, masks, temperature=0.1, instance_ids=ids, generator=seeded())
    # each anchor draws 1 pixel of its own image (same object) and 2 of the other image (another object)
    assert diag["false_negative_rate"] == pytest.approx(1 / 3)


def test_fused_sampling_avoids_pixels_of_the_anchor_instance() -> None:
    regions = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 2]], [[2, 2, 1, 1], [0, 2, 2, 1]]])
    logits, masks = hard_partition_predictions(regions)
    feats = one_hot_features(2, 2, 4)
    pxl = identity_contrast(num_negatives=16, sampling="fused", max_anchors=None, patch_size=None)
    ids = regions + 1  # ground truth agrees with the predictions
    _, diag = pxl(feats, feats, logits, masks, temperature=0.1, instance_ids=ids, generator=seeded())
    assert diag["false_negative_rate"] == 0.0
    uniform = identity_contrast(num_negatives=16, sampling="uniform", max_anchors=None)
    _, diag_uniform = uniform(feats, feats, logits, masks, temperature=0.1, instance_ids=ids, generator=seeded())
    # uniform draws all 15 other pixels; same image and region: (4*3 + 3*2 + 1*0) per image, 16*15 pairs
    assert diag_uniform["false_negative_rate"] == pytest.approx(36 / 240)


def test_anchor_subsampling_uses_max_anchors_pixels() -> None:
    torch.manual_seed(0)
    feat_weak = torch.randn(2, 6, 4, 6, requires_grad=True)  # 48 pixels
    logits, masks = random_predictions(2, 3, 2, (16, 24))
    for max_anchors, expected in [(10, 10), (None, 48), (100, 48)]:
        feat_weak.grad = None
        pxl = PixelContrast(in_channels=6, hidden_dim=8, embed_dim=5, num_negatives=6, max_anchors=max_anchors)
        loss, _ = pxl(feat_weak, feat_weak.detach(), logits, masks, temperature=0.1, generator=seeded())
        loss.backward()
        # the heads are per-pixel, so only anchor pixels of the weak view receive a gradient
        assert int((feat_weak.grad.abs().sum(1) > 0).sum()) == expected


def test_seeded_generator_makes_it_deterministic() -> None:
    torch.manual_seed(0)
    pxl = PixelContrast(in_channels=6, hidden_dim=8, embed_dim=5, num_negatives=5, max_anchors=20)
    feat_weak, feat_strong = torch.randn(2, 6, 4, 6), torch.randn(2, 6, 4, 6)
    logits, masks = random_predictions(2, 3, 2, (16, 24))
    ids = torch.randint(-1, 4, (2, 4, 6), generator=seeded(5))
    runs = [pxl(feat_weak, feat_strong, logits, masks, temperature=0.1, instance_ids=ids, generator=seeded(s))
            for s in (3, 3, 4)]
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not torch.equal(runs[0][0], runs[2][0])


def test_shape_mismatches_are_reported() -> None:
    pxl = PixelContrast(in_channels=6, hidden_dim=8, embed_dim=5)
    logits, masks = random_predictions(2, 3, 2, (16, 24))
    with pytest.raises(ValueError, match="feat_strong"):
        pxl(torch.randn(2, 6, 4, 6), torch.randn(2, 6, 4, 5), logits, masks, temperature=0.1)
    with pytest.raises(ValueError, match="instance_ids"):
        pxl(torch.randn(2, 6, 4, 6), torch.randn(2, 6, 4, 6), logits, masks, temperature=0.1,
            instance_ids=torch.zeros(2, 4, 5, dtype=torch.long))


# --- schedule and the real model --------------------------------------------------------------------


def test_temperature_schedule_endpoints() -> None:
    assert temperature_at(0, 100) == pytest.approx(0.3)
    assert temperature_at(100, 100) == pytest.approx(0.07)
    assert temperature_at(500, 100) == pytest.approx(0.07)
    assert temperature_at(50, 100) == pytest.approx((0.3 + 0.07) / 2)  # cosine: halfway at mid-training
    values = [temperature_at(s, 100) for s in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert temperature_at(37, 100, start=0.1, schedule="fixed") == 0.1
    with pytest.raises(ValueError):
        temperature_at(0, 10, schedule="step")


def test_works_on_student_tiny_features() -> None:
    torch.manual_seed(0)
    config = PRESETS["student-tiny"].with_classes(3).updated(input_size=(64, 96))
    model = build_model(config)
    out = model(torch.randn(2, 3, 64, 96))
    with torch.no_grad():
        feat_strong = model.encoder(torch.randn(2, 3, 64, 96))[-1]
    pxl = PixelContrast(in_channels=model.encoder.hidden_size, hidden_dim=32, embed_dim=16, num_negatives=10,
                        patch_size=model.encoder.patch_size)
    ids = torch.randint(-1, 3, (2, *out["features"].shape[-2:]))
    loss, diag = pxl(out["features"], feat_strong, out["pred_logits"], out["pred_masks"], temperature=0.1,
                     instance_ids=ids, generator=seeded())
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(diag) == {"margin", "false_negative_rate", "positive_sim", "negative_sim"}
    assert all(math.isfinite(v) for v in diag.values())
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert all(p.grad is None for p in model.transformer_decoder.parameters())  # predictions are detached


def test_anchor_without_valid_negatives_has_zero_loss_and_finite_gradient() -> None:
    anchor = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1).requires_grad_(True)
    index = torch.zeros(2, 3, dtype=torch.long)
    valid = torch.tensor([[False, False, False], [True, False, False]])
    loss, _, _ = info_nce(anchor, anchor.detach(), torch.eye(4), index, valid, 0.1)
    assert loss[0].item() == 0.0 and loss[1].item() > 0
    loss.sum().backward()
    assert torch.isfinite(anchor.grad).all() and torch.equal(anchor.grad[0], torch.zeros(4))


def test_instance_ids_cover_the_padded_patch_grid() -> None:
    """The encoder pads 64 x 96 to 70 x 98 (patch 14): the 5 x 7 grid reads ids at its cell centres,
    and cells centred in the padding are unknown (-1)."""
    from sskd_deploy.training.objective import ids_on_grid

    ids = torch.zeros(1, 64, 96, dtype=torch.int64)
    ids[0, 56:, :] = 3  # the last rows of the image
    grid = ids_on_grid(ids, (5, 7), 14)
    assert grid.shape == (1, 5, 7)
    assert (grid[0, 4] == 3).all()  # centre row 63 lies in the image
    assert (grid[0, :4] == 0).all()
    tall = ids_on_grid(torch.zeros(1, 60, 96, dtype=torch.int64), (5, 7), 14)
    assert (tall[0, 4] == -1).all()  # centre row 63 is padding of a 60-row image
