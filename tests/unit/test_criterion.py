"""Mask2Former set criterion: point sampling, Hungarian matching and the weighted losses.

Toy cases are small enough to check by hand: predictions live at stride 4 (8x12) against 32x48
targets whose instances are aligned to 4-pixel blocks, so the shrunk targets stay exactly binary.
"""

from __future__ import annotations

import math

import pytest
import torch

from sskd_deploy.models import criterion as criterion_module
from sskd_deploy.models.criterion import LossWeights, SetCriterion
from sskd_deploy.models.matcher import HungarianMatcher, resize_masks
from sskd_deploy.models.point_sampling import point_sample, uncertain_points

C, K, H, W = 3, 5, 32, 48
h, w = H // 4, W // 4
TERMS = ("loss_class", "loss_mask", "loss_dice")


def block_mask(top: int, left: int, bottom: int, right: int) -> torch.Tensor:
    """Bool (H, W) mask covering stride-4 cells [top, bottom) x [left, right)."""
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[top * 4:bottom * 4, left * 4:right * 4] = True
    return mask


def target(labels: list[int], boxes: list[tuple[int, int, int, int]]) -> dict[str, torch.Tensor]:
    masks = torch.stack([block_mask(*b) for b in boxes]) if boxes else torch.zeros(0, H, W, dtype=torch.bool)
    return {"labels": torch.tensor(labels, dtype=torch.int64), "masks": masks}


def perfect_outputs(targets: list[dict], query_of: list[list[int]]) -> dict[str, torch.Tensor]:
    """Outputs where query ``query_of[b][n]`` predicts target n exactly; others predict no-object."""
    logits = torch.full((len(targets), K, C + 1), -10.0)
    logits[:, :, C] = 10.0
    masks = torch.full((len(targets), K, h, w), -20.0)
    for b, (t, queries) in enumerate(zip(targets, query_of)):
        for n, k in enumerate(queries):
            logits[b, k] = -10.0
            logits[b, k, t["labels"][n]] = 10.0
            masks[b, k] = torch.where(resize_masks(t["masks"][n:n + 1], (h, w))[0] > 0.5, 20.0, -20.0)
    return {"pred_logits": logits.requires_grad_(), "pred_masks": masks.requires_grad_()}


def random_outputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pred_logits": torch.randn(batch, K, C + 1, generator=g).requires_grad_(),
            "pred_masks": (3 * torch.randn(batch, K, h, w, generator=g)).requires_grad_()}


TWO = [target([0, 2], [(0, 0, 4, 6), (4, 6, 8, 12)]), target([1], [(2, 2, 6, 9)])]


# -- point sampling -----------------------------------------------------------------------------

def test_point_sample_reads_pixel_centres_and_interpolates() -> None:
    image = torch.arange(12.0).reshape(1, 1, 3, 4)  # value = 4 * row + col
    centres = torch.tensor([[[(1 + 0.5) / 4, (2 + 0.5) / 3], [(0 + 0.5) / 4, (0 + 0.5) / 3]]])
    assert point_sample(image, centres).flatten().tolist() == pytest.approx([9.0, 0.0], abs=1e-5)
    between = torch.tensor([[[2.0 / 4, 1.5 / 3]]])  # halfway between columns 1 and 2 of row 1
    assert point_sample(image, between).item() == pytest.approx(5.5)
    corner = torch.tensor([[[0.0, 0.0]]])  # outer corner reads the edge pixel, not zero padding
    assert point_sample(image, corner).item() == pytest.approx(0.0)
    assert point_sample(image + 1, corner).item() == pytest.approx(1.0)


def test_uncertain_points_prefer_the_boundary_and_respect_the_seed() -> None:
    ramp = torch.linspace(-8, 8, 64).repeat(1, 1, 16, 1)  # logit 0 at x = 0.5
    torch.manual_seed(3)
    first = uncertain_points(ramp, 300, 3.0, 1.0)
    torch.manual_seed(3)
    assert torch.equal(first, uncertain_points(ramp, 300, 3.0, 1.0))
    assert first.shape == (1, 300, 2) and first.min() >= 0 and first.max() <= 1
    # The most uncertain third of uniform candidates: |x - 0.5| ~ U(0, 1/6), mean 1/12 (uniform: 1/4).
    assert (first[0, :, 0] - 0.5).abs().mean() < 0.11
    uniform = uncertain_points(ramp, 300, 3.0, 0.0)
    assert (uniform[0, :, 0] - 0.5).abs().mean() > 0.19
    mixed = uncertain_points(ramp, 100, 3.0, 0.75, generator=torch.Generator().manual_seed(0))
    assert (mixed[0, :75, 0] - 0.5).abs().max() < 0.25  # importance part stays near the boundary


def test_resize_masks_keeps_aligned_blocks_binary_and_softens_others() -> None:
    shrunk = resize_masks(block_mask(1, 2, 3, 5)[None], (h, w))[0]
    expected = torch.zeros(h, w)
    expected[1:3, 2:5] = 1.0
    assert torch.equal(shrunk, expected)
    odd = torch.zeros(1, H, W, dtype=torch.bool)
    odd[0, :2, :4] = True  # half of cell (0, 0)
    odd[0, 4, 4] = True  # one pixel of cell (1, 1): the covered fraction, not a point read
    assert resize_masks(odd, (h, w))[0, :2, :2].flatten().tolist() == pytest.approx([0.5, 0, 0, 1 / 16])


# -- matcher ------------------------------------------------------------------------------------

def test_hand_computed_cost_and_matching() -> None:
    top = torch.tensor([[20.0, 20.0], [-20.0, -20.0]])
    logits = torch.zeros(1, 2, 3)  # uniform over C=2 classes + no-object: p = 1/3
    masks = torch.stack([top, -top])[None]  # query 0 = top row, query 1 = bottom row
    tgt = {"labels": torch.tensor([0, 1]), "masks": torch.stack([top < 0, top > 0])}  # t0 bottom, t1 top
    # wrong pair: every pixel costs softplus(20) ~ 20, dice 1 - 1/5; right pair: ~0 and ~0.
    for class_cost, class_term in (("prob", -2 / 3), ("ce", 2 * math.log(3))):
        matcher = HungarianMatcher(num_points=None, class_cost=class_cost)
        cost = matcher.cost_matrix(logits[0], masks[0], tgt)
        wrong = class_term + 5 * 20.0 + 5 * 0.8
        assert cost.flatten().tolist() == pytest.approx([wrong, class_term, class_term, wrong], abs=1e-4)
    (queries, targets), = matcher(logits, masks, [tgt])
    assert queries.tolist() == [0, 1] and targets.tolist() == [1, 0]
    assert queries.dtype == targets.dtype == torch.int64


@pytest.mark.parametrize("num_points", [None, 200])
def test_matching_is_invariant_to_permuting_targets_and_queries(num_points: int | None) -> None:
    out = random_outputs(1, seed=1)
    tgt = target([0, 1, 2, 1], [(0, 0, 4, 6), (4, 6, 8, 12), (2, 2, 6, 9), (0, 8, 3, 12)])
    matcher = HungarianMatcher(num_points=num_points)

    def pairs(logits, masks, t) -> set[tuple[int, int]]:
        torch.manual_seed(0)  # same random points for every call
        q, n = matcher(logits, masks, [t])[0]
        return set(zip(q.tolist(), n.tolist()))

    base = pairs(out["pred_logits"], out["pred_masks"], tgt)
    assert len(base) == 4
    perm = torch.tensor([2, 0, 3, 1])  # new target i is old target perm[i]
    permuted = {"labels": tgt["labels"][perm], "masks": tgt["masks"][perm]}
    got = pairs(out["pred_logits"], out["pred_masks"], permuted)
    assert {(q, perm[n].item()) for q, n in got} == base
    qperm = torch.tensor([4, 2, 0, 1, 3])  # new query i is old query qperm[i]
    got = pairs(out["pred_logits"][:, qperm], out["pred_masks"][:, qperm], tgt)
    assert {(qperm[q].item(), n) for q, n in got} == base


# -- losses -------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_points", [None, 300])
def test_perfect_prediction_scores_near_zero(num_points: int | None) -> None:
    out = perfect_outputs(TWO, [[3, 1], [0]])
    torch.manual_seed(0)
    losses = SetCriterion(num_classes=C, num_points=num_points)(out, TWO)
    assert losses["loss_class"].item() < 1e-6 * 2 * 20  # CE of a 20-logit margin ~ 4 * e^-20
    if num_points is None:
        assert losses["loss_mask"].item() < 1e-6 and losses["loss_dice"].item() < 1e-6
    else:
        # Points between stride-4 cells read a blurred logit against a sharp target; importance
        # sampling seeks them out, so only a bound relative to an unrelated prediction holds.
        torch.manual_seed(0)
        wrong = SetCriterion(num_classes=C, num_points=num_points)(random_outputs(2), TWO)
        for term in ("loss_mask", "loss_dice"):
            assert losses[term] < 0.2 * wrong[term]


def test_hand_computed_class_and_mask_losses() -> None:
    # C = 1: columns (class 0, no-object). Query 0 is matched through its mask, query 1 is not.
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]], requires_grad=True)
    masks = torch.zeros(1, 2, 2, 2)
    masks[0, 1] = -20.0  # query 1 predicts nothing, query 0 is unsure (logit 0) everywhere
    masks.requires_grad_()
    tgt = [{"labels": torch.tensor([0]), "masks": torch.tensor([[[True, True], [False, False]]])}]
    losses = SetCriterion(num_classes=1, num_points=None)({"pred_logits": logits, "pred_masks": masks}, tgt)
    ce_matched, ce_empty = math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1))
    assert losses["loss_class"].item() == pytest.approx(2 * (ce_matched + 0.1 * ce_empty) / 1.1, rel=1e-5)
    assert losses["loss_mask"].item() == pytest.approx(5 * math.log(2), rel=1e-5)  # p = 0.5 on 4 pixels
    assert losses["loss_dice"].item() == pytest.approx(5 * (1 - (2 * 1.0 + 1) / (2.0 + 2 + 1)), rel=1e-5)


@pytest.mark.parametrize("num_points", [None, 64])
def test_image_without_targets_trains_only_no_object(num_points: int | None) -> None:
    out = random_outputs(1)
    losses = SetCriterion(num_classes=C, num_points=num_points)(out, [target([], [])])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    assert losses["loss_class"].item() > 0.0
    losses["loss"].backward()
    assert torch.count_nonzero(out["pred_masks"].grad) == 0
    grad = out["pred_logits"].grad[0]
    assert (grad[:, C] < 0).all() and (grad[:, :C] > 0).all()  # every query pushed to no-object


@pytest.mark.parametrize("num_points", [None, 64])
def test_gradients_reach_logits_and_matched_masks_only(num_points: int | None) -> None:
    out = random_outputs(3, seed=2)
    targets = [TWO[0], target([], []), TWO[1]]  # mixed empty / non-empty batch
    crit = SetCriterion(num_classes=C, num_points=num_points, deep_supervision=False)
    torch.manual_seed(0)  # the criterion's matcher then draws the same points as this one
    matches = crit.matcher(out["pred_logits"], out["pred_masks"], targets)
    torch.manual_seed(0)
    crit(out, targets)["loss"].backward()
    assert torch.count_nonzero(out["pred_logits"].grad) == out["pred_logits"].numel()
    mask_grad = out["pred_masks"].grad.flatten(2).abs().sum(-1)  # (B, K)
    matched = torch.zeros(3, K, dtype=torch.bool)
    for b, (q, _) in enumerate(matches):
        matched[b, q] = True
    assert matched.sum() == 3 and (mask_grad[matched] > 0).all() and (mask_grad[~matched] == 0).all()


def test_mixed_batch_normalises_by_the_number_of_masks_in_the_batch() -> None:
    out = random_outputs(3, seed=4)
    targets = [TWO[0], target([], []), TWO[1]]
    crit = SetCriterion(num_classes=C, num_points=None, deep_supervision=False)
    batch = crit(out, targets)
    singles = [crit({k: v[b:b + 1] for k, v in out.items()}, [t]) for b, t in enumerate(targets)]
    counts = torch.tensor([2.0, 0.0, 1.0])
    for term in ("loss_mask", "loss_dice"):
        expected = sum(c * s[term] for c, s in zip(counts, singles)) / counts.sum()
        assert batch[term].item() == pytest.approx(expected.item(), rel=1e-5)
    class_weight_sum = counts + 0.1 * (K - counts)  # CE is a weighted mean over every query
    expected = sum(wt * s["loss_class"] for wt, s in zip(class_weight_sum, singles)) / class_weight_sum.sum()
    assert batch["loss_class"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_deep_supervision_adds_one_set_of_terms_per_aux_output() -> None:
    out = random_outputs(2)
    aux = [random_outputs(2, seed=5), {k: v for k, v in out.items()}]
    losses = SetCriterion(num_classes=C, num_points=None)({**out, "aux_outputs": aux}, TWO)
    expected_keys = {*TERMS, *(f"{t}_aux{i}" for t in TERMS for i in range(2)), "loss"}
    assert set(losses) == expected_keys
    parts = sum(v.item() for k, v in losses.items() if k != "loss")
    assert losses["loss"].item() == pytest.approx(parts, rel=1e-6)
    for term in TERMS:  # aux 1 repeats the final layer, aux 0 differs
        assert losses[f"{term}_aux1"].item() == pytest.approx(losses[term].item(), rel=1e-6)
        assert losses[f"{term}_aux0"].item() != pytest.approx(losses[term].item(), rel=1e-3)
    off = SetCriterion(num_classes=C, num_points=None, deep_supervision=False)
    assert set(off({**out, "aux_outputs": aux}, TWO)) == {*TERMS, "loss"}


def test_point_sampled_loss_approximates_the_full_mask_loss_on_a_smooth_example() -> None:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    smooth = 3.0 - 6.0 * (xx**2 + yy**2)  # a soft disk, logits at full resolution (h = H here)
    tgt = [{"labels": torch.tensor([1]), "masks": (xx**2 + 1.2 * yy**2 < 0.45)[None]}]
    out = {"pred_logits": torch.zeros(1, 2, C + 1), "pred_masks": torch.stack([smooth, -smooth])[None]}
    full = SetCriterion(num_classes=C, num_points=None)(out, tgt)
    torch.manual_seed(0)
    points = SetCriterion(num_classes=C, num_points=8192, importance_sample_ratio=0.0)(out, tgt)
    for term in ("loss_mask", "loss_dice"):
        assert points[term].item() == pytest.approx(full[term].item(), rel=0.05)
    assert points["loss_class"].item() == pytest.approx(full["loss_class"].item(), rel=1e-6)


def test_point_path_is_reproducible_under_a_seed_and_handles_other_target_sizes() -> None:
    out = random_outputs(2, seed=6)
    odd = [{"labels": t["labels"], "masks": resize_masks(t["masks"], (30, 45)) > 0.5} for t in TWO]
    crit = SetCriterion(num_classes=C, num_points=128)
    torch.manual_seed(7)
    first = crit(out, odd)
    torch.manual_seed(7)
    assert first["loss"].item() == crit(out, odd)["loss"].item()
    full = SetCriterion(num_classes=C, num_points=None)(out, odd)  # 30x45 targets vs 8x12 predictions
    assert torch.isfinite(full["loss"])


def test_mask_count_is_averaged_over_distributed_processes(monkeypatch) -> None:
    out = random_outputs(2, seed=8)
    crit = SetCriterion(num_classes=C, num_points=None, deep_supervision=False)
    local = crit(out, TWO)
    dist = criterion_module.dist
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda t: t.add_(9.0))  # the other rank holds 9 masks
    shared = crit(out, TWO)
    scale = 3.0 / ((3.0 + 9.0) / 2)  # local count 3 -> mean count 6
    for term in ("loss_mask", "loss_dice"):
        assert shared[term].item() == pytest.approx(local[term].item() * scale, rel=1e-6)
    assert shared["loss_class"].item() == pytest.approx(local["loss_class"].item(), rel=1e-6)


def test_bad_targets_and_outputs_are_rejected() -> None:
    crit = SetCriterion(num_classes=C, num_points=None)
    with pytest.raises(ValueError, match="labels must lie"):
        crit(random_outputs(1), [target([C], [(0, 0, 2, 2)])])
    with pytest.raises(ValueError, match="pred_logits"):
        SetCriterion(num_classes=C + 1, num_points=None)(random_outputs(2), TWO)
    with pytest.raises(ValueError, match="target dicts"):
        crit(random_outputs(1), TWO)
    assert LossWeights().no_object_weight == 0.1 and crit.class_weight.tolist()[-1] == pytest.approx(0.1)


def test_semantic_aux_loss_reads_the_class_at_each_cell_centre() -> None:
    """Dense auxiliary CE: cell targets are the class under the cell's centre pixel (background = C);
    logits that put all mass on those classes score ~0, uniform logits score log(C + 1)."""
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, :16, :16] = True  # class 2, top-left quarter
    masks[1, 16:, 8:24] = True  # class 0
    target = {"labels": torch.tensor([2, 0]), "masks": masks}
    criterion = SetCriterion(num_classes=3, num_points=None, weights=LossWeights(semantic_weight=1.0,
                                                                                 semantic_loss="dense"))
    expected = torch.full((1, 4, 4), 3)  # stride 8: centres at 4, 12, 20, 28
    expected[0, :2, :2] = 2
    expected[0, 2:, 1:3] = 0
    perfect = 40.0 * torch.nn.functional.one_hot(expected, 4).permute(0, 3, 1, 2).float() - 20.0
    assert criterion._semantic_loss([perfect], [target]) < 1e-6
    uniform = torch.zeros(1, 4, 4, 4)
    torch.testing.assert_close(criterion._semantic_loss([uniform], [target]), torch.tensor(math.log(4.0)))
    # in the full loss, only when the model emits the head's logits, weighted
    outputs = {"pred_logits": torch.zeros(1, 5, 4), "pred_masks": torch.zeros(1, 5, 8, 8)}
    assert "loss_semantic" not in criterion(outputs, [target])
    weighted = SetCriterion(num_classes=3, num_points=None, weights=LossWeights(semantic_weight=0.5,
                                                                                semantic_loss="dense"))
    losses = weighted({**outputs, "aux_semantic": [uniform]}, [target])
    torch.testing.assert_close(losses["loss_semantic"], torch.tensor(0.5 * math.log(4.0)))


def test_query_groups_are_matched_apart_and_averaged() -> None:
    """Group DETR: two identical groups give exactly the one-group loss; each group is matched on its own."""
    torch.manual_seed(0)
    criterion = SetCriterion(num_classes=3, num_points=None)
    target = {"labels": torch.tensor([1]), "masks": torch.rand(1, 16, 16) > 0.5}
    logits, masks = torch.randn(1, 4, 4), torch.randn(1, 4, 8, 8)
    single = criterion({"pred_logits": logits, "pred_masks": masks}, [target])
    doubled = criterion({"pred_logits": logits.repeat(1, 2, 1), "pred_masks": masks.repeat(1, 2, 1, 1),
                         "query_groups": 2}, [target])
    torch.testing.assert_close(doubled["loss"], single["loss"])
    other = criterion({"pred_logits": torch.cat([logits, torch.randn(1, 4, 4)], 1),
                       "pred_masks": torch.cat([masks, torch.randn(1, 4, 8, 8)], 1), "query_groups": 2}, [target])
    assert not torch.allclose(other["loss"], single["loss"])


def test_pooled_class_loss_averages_each_instance_over_its_mask() -> None:
    """``pooled``: an instance's logits are averaged over its (resized) mask, then cross-entropy with its class;
    instances too small to cover a quarter cell at a level are left out there."""
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, :16, :16] = True  # class 2: cells (0..1, 0..1) at stride 8
    masks[1, 30:, 30:] = True  # 4 px: 1/16 of a cell, left out
    target = {"labels": torch.tensor([2, 0]), "masks": masks}
    criterion = SetCriterion(num_classes=3, num_points=None, weights=LossWeights(semantic_loss="pooled"))
    logits = torch.zeros(1, 4, 4, 4)
    logits[0, 2, :2, :2] = 3.0  # class 2 inside the object
    logits[0, 0, :2, :2] = torch.tensor([[1.0, 0.0], [0.0, -1.0]])  # averages to 0
    pooled = torch.tensor([[0.0, 0.0, 3.0, 0.0]])
    expected = torch.nn.functional.cross_entropy(pooled, torch.tensor([2]))
    torch.testing.assert_close(criterion._semantic_loss([logits], [target]), expected)
    both = SetCriterion(num_classes=3, num_points=None, weights=LossWeights(semantic_loss="both"))
    dense = SetCriterion(num_classes=3, num_points=None, weights=LossWeights(semantic_loss="dense"))
    torch.testing.assert_close(both._semantic_loss([logits], [target]),
                               (expected + dense._semantic_loss([logits], [target])) / 2)
