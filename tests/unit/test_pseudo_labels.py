"""The pseudo-label store: exact filtering, overlap resolution, geometry, the COCO file, reuse and keys."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from sskd_deploy.config.model import PRESETS
from sskd_deploy.data.coco import read_coco
from sskd_deploy.data.image_io import write_png
from sskd_deploy.data.records import CategorySet, Dataset, ImageRecord
from sskd_deploy.errors import DatasetError
from sskd_deploy.models.criterion import SetCriterion
from sskd_deploy.models.maskformer import build_model
from sskd_deploy.models.teacher import MaskFormerTeacher
from sskd_deploy.preprocess import fit_geometry
from sskd_deploy.training.pseudo_labels import (
    PseudoLabelConfig,
    build_pseudo_labels,
    instances_from_queries,
    store_key,
)

INPUT = (64, 96)
GRID = (16, 24)  # stride 4
CATEGORIES = CategorySet(("car", "person", "sign"), (1, 2, 5))
NO_OBJECT = 3


def _query(label: int, prob: float) -> np.ndarray:
    """Class probabilities (C+1,) with ``prob`` on ``label`` and the rest on no-object."""
    row = np.zeros(4, np.float32)
    row[label], row[NO_OBJECT] = prob, 1.0 - prob
    return row


def _mask(rows: slice, cols: slice, inside: float) -> np.ndarray:
    """Mask probabilities on the grid: ``inside`` in the block, 0.01 elsewhere."""
    m = np.full(GRID, 0.01, np.float32)
    m[rows, cols] = inside
    return m


def _queries() -> tuple[np.ndarray, np.ndarray]:
    """Five queries on disjoint blocks, each at one edge of one threshold (default config)."""
    specs = [
        (_query(1, 0.71), _mask(slice(0, 4), slice(0, 6), 0.9)),  # kept: 0.71 * 0.9 = 0.639
        (_query(0, 0.69), _mask(slice(0, 4), slice(8, 14), 1.0)),  # class prob below 0.7
        (_query(2, 0.80), _mask(slice(6, 10), slice(0, 6), 0.6)),  # score 0.48 below 0.5
        (_query(0, 0.95), _mask(slice(6, 10), slice(8, 14), 0.99)),  # kept: 0.9405
        (_query(2, 0.05), _mask(slice(12, 16), slice(16, 24), 0.99)),  # mostly no-object
    ]
    return np.stack([c for c, _ in specs]), np.stack([m for _, m in specs])


def test_thresholds_filter_exactly() -> None:
    class_prob, mask_prob = _queries()
    out = instances_from_queries(class_prob, mask_prob, fit_geometry(INPUT, INPUT), PseudoLabelConfig(min_area=0))
    assert out.labels.tolist() == [0, 1]  # sorted by score
    np.testing.assert_allclose(out.scores, [0.95 * 0.99, 0.71 * 0.9], rtol=1e-6)
    assert out.masks.shape == (2, *INPUT)
    # Moving a threshold just past a query's value removes exactly that query.
    fewer = instances_from_queries(class_prob, mask_prob, fit_geometry(INPUT, INPUT),
                                   PseudoLabelConfig(min_area=0, score_threshold=0.7))
    assert fewer.labels.tolist() == [0]
    more = instances_from_queries(class_prob, mask_prob, fit_geometry(INPUT, INPUT),
                                  PseudoLabelConfig(min_area=0, class_threshold=0.6, score_threshold=0.4))
    assert sorted(more.labels.tolist()) == [0, 0, 1, 2]
    # Strictly above: a class probability equal to the threshold is not enough (0.75 is exact in float32).
    edge = np.stack([_query(1, 0.75)]), mask_prob[:1]
    assert len(instances_from_queries(*edge, fit_geometry(INPUT, INPUT), PseudoLabelConfig(class_threshold=0.75))) == 0
    assert len(instances_from_queries(*edge, fit_geometry(INPUT, INPUT), PseudoLabelConfig(class_threshold=0.7499))) == 1


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_masks_are_the_upsampled_logits_above_the_mask_threshold(threshold: float) -> None:
    yy, xx = np.mgrid[0:GRID[0], 0:GRID[1]]
    blob = np.exp(-((yy - 7.3) ** 2 + (xx - 11.6) ** 2) / 30.0).astype(np.float32)[None]  # (1, 16, 24) in (0, 1]
    cfg = PseudoLabelConfig(score_threshold=0.0, min_area=0, mask_threshold=threshold)
    out = instances_from_queries(np.stack([_query(2, 0.9)]), blob, fit_geometry(INPUT, INPUT), cfg)
    logits = torch.logit(torch.from_numpy(blob).double())[None]
    reference = torch.nn.functional.interpolate(logits, size=INPUT, mode="bilinear", align_corners=False)[0, 0]
    expected = (reference > np.log(threshold / (1 - threshold))).numpy()
    assert out.labels.tolist() == [2] and expected.sum() > 100
    assert (out.masks[0] != expected).sum() <= 2  # only float ties at the contour may differ
    inside = blob[0] > threshold
    assert out.scores[0] == pytest.approx(0.9 * blob[0][inside].mean(), rel=1e-5)


def test_min_area_and_max_instances_are_exact() -> None:
    class_prob, mask_prob = _queries()
    info = fit_geometry(INPUT, INPUT)
    base = PseudoLabelConfig(min_area=0)
    areas = instances_from_queries(class_prob, mask_prob, info, base).masks.sum(axis=(1, 2))
    small = int(areas.min())
    kept = instances_from_queries(class_prob, mask_prob, info, replace(base, min_area=small))
    dropped = instances_from_queries(class_prob, mask_prob, info, replace(base, min_area=small + 1))
    assert len(kept) == 2 and len(dropped) == 1
    top = instances_from_queries(class_prob, mask_prob, info, replace(base, max_instances=1))
    assert top.labels.tolist() == [0] and top.scores[0] == pytest.approx(0.95 * 0.99)


def test_overlaps_go_to_the_higher_score() -> None:
    class_prob = np.stack([_query(0, 0.8), _query(1, 0.9)])
    mask_prob = np.stack([_mask(slice(0, 8), slice(0, 12), 0.9), _mask(slice(4, 12), slice(6, 18), 0.9)])
    info = fit_geometry(INPUT, INPUT)
    cfg = PseudoLabelConfig(min_area=0)
    raw = instances_from_queries(class_prob, mask_prob, info, replace(cfg, resolve_overlaps=False))
    resolved = instances_from_queries(class_prob, mask_prob, info, cfg)
    assert raw.labels.tolist() == resolved.labels.tolist() == [1, 0]
    overlap = raw.masks[0] & raw.masks[1]
    assert overlap.sum() > 50
    assert not (resolved.masks[0] & resolved.masks[1]).any()
    np.testing.assert_array_equal(resolved.masks[0], raw.masks[0])  # the winner keeps everything
    np.testing.assert_array_equal(resolved.masks[1], raw.masks[1] & ~raw.masks[0])


def test_a_dropped_instance_claims_no_pixels() -> None:
    # The best query is almost entirely covered by nothing else but is tiny, so min_area drops it;
    # the pixels it shares with the next query must then go to that query.
    class_prob = np.stack([_query(0, 0.95), _query(1, 0.9)])
    mask_prob = np.stack([_mask(slice(4, 5), slice(4, 5), 0.99), _mask(slice(2, 8), slice(2, 8), 0.9)])
    info = fit_geometry(INPUT, INPUT)
    raw = instances_from_queries(class_prob, mask_prob, info, PseudoLabelConfig(min_area=0, resolve_overlaps=False))
    out = instances_from_queries(class_prob, mask_prob, info, PseudoLabelConfig(min_area=int(raw.masks[0].sum()) + 1))
    assert out.labels.tolist() == [1]
    np.testing.assert_array_equal(out.masks[0], raw.masks[1])


class FakeTeacher(torch.nn.Module):
    """Returns the crafted queries for every image; counts calls; can fail on a given call."""

    def __init__(self, class_prob: np.ndarray, mask_prob: np.ndarray, fail_on_call: int | None = None) -> None:
        super().__init__()
        self.class_prob, self.mask_prob = torch.from_numpy(class_prob), torch.from_numpy(mask_prob)
        self.calls, self.fail_on_call, self.modes = 0, fail_on_call, []

    def predict_queries(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        assert images.dtype == torch.uint8 and tuple(images.shape[1:]) == (3, *INPUT)
        self.calls += 1
        self.modes.append(self.training)
        if self.calls == self.fail_on_call:
            raise RuntimeError("teacher crashed")
        b = images.shape[0]
        return {"class_prob": self.class_prob.expand(b, -1, -1), "mask_prob": self.mask_prob.expand(b, -1, -1, -1)}


def _unlabeled(root: Path, sizes=((50, 70), (130, 200), (64, 96))) -> Dataset:
    images = root / "images"
    rng = np.random.default_rng(0)
    records = []
    for i, (h, w) in enumerate(sizes):
        name = f"img{i}.png"
        write_png(images / name, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        records.append(ImageRecord(10 + i, name, (images / name).absolute(), h, w, None))
    return Dataset("unl", CATEGORIES, tuple(records), root / "unl.json", images.absolute())


def _build(teacher, unlabeled: Dataset, out: Path, **kwargs):
    kwargs.setdefault("cfg", PseudoLabelConfig(min_area=4, batch_size=2))
    kwargs.setdefault("teacher_hash", "teacher-a")
    return build_pseudo_labels(teacher, unlabeled, out_root=out, input_size=INPUT, **kwargs)


def test_store_masks_at_original_size_roundtrip_and_reuse(tmp_path: Path) -> None:
    unlabeled = _unlabeled(tmp_path)
    teacher = FakeTeacher(*_queries())
    teacher.train()
    calls: list[tuple[int, int]] = []
    store = _build(teacher, unlabeled, tmp_path / "pseudo", progress=lambda d, t: calls.append((d, t)))
    assert not store.reused and teacher.calls == 2 and calls == [(2, 3), (3, 3)]
    assert teacher.modes == [False, False] and teacher.training  # labels in eval mode, mode restored after
    assert store.stats["images"] == 3 and store.stats["instances"] == 6
    assert store.stats["per_class"] == {"car": 3, "person": 3, "sign": 0}
    for record, source in zip(store.dataset.records, unlabeled.records):
        assert (record.image_id, record.path) == (source.image_id, source.path) and record.labeled
        inst = record.instances()
        assert inst.masks.shape == (2, source.height, source.width)
        assert {round(float(s), 4) for s in inst.scores} == {round(0.95 * 0.99, 4), round(0.71 * 0.9, 4)}
    # The car query covers input rows 24..40, cols 32..56; the 130x200 image was scaled by 0.48.
    ys, xs = np.nonzero(store.dataset.records[1].instances().masks[0])
    assert abs(ys.min() - 24 / 0.48) <= 3 and abs(ys.max() + 1 - 40 / 0.48) <= 3
    assert abs(xs.min() - 32 / 0.48) <= 3 and abs(xs.max() + 1 - 56 / 0.48) <= 3
    loaded = read_coco(store.path / "pseudo_labels.json", unlabeled.image_root)
    assert loaded.records == store.dataset.records and loaded.categories == CATEGORIES
    manifest = json.loads((store.path / "manifest.json").read_text())
    assert manifest["key"] == store.key == store.path.name and manifest["stats"] == store.stats

    again = _build(FakeTeacher(*_queries()), unlabeled, tmp_path / "pseudo")
    assert again.reused and again.key == store.key
    assert again.dataset.records == store.dataset.records and again.stats == store.stats
    rerun_teacher = FakeTeacher(*_queries())
    _build(rerun_teacher, unlabeled, tmp_path / "pseudo", console=Console(file=io.StringIO()))
    assert rerun_teacher.calls == 0


def test_any_input_change_makes_a_new_key(tmp_path: Path) -> None:
    unlabeled = _unlabeled(tmp_path)
    cfg = PseudoLabelConfig()
    key = store_key(teacher_hash="t", images=unlabeled.records, cfg=cfg, input_size=INPUT)
    assert key == store_key(teacher_hash="t", images=unlabeled.records, cfg=replace(cfg, batch_size=3),
                            input_size=INPUT)  # batching does not change the labels
    changed = {
        store_key(teacher_hash="u", images=unlabeled.records, cfg=cfg, input_size=INPUT),
        store_key(teacher_hash="t", images=unlabeled.records, cfg=replace(cfg, class_threshold=0.71), input_size=INPUT),
        store_key(teacher_hash="t", images=unlabeled.records, cfg=replace(cfg, min_area=17), input_size=INPUT),
        store_key(teacher_hash="t", images=unlabeled.records, cfg=cfg, input_size=(128, 192)),
        store_key(teacher_hash="t", images=unlabeled.records[:2], cfg=cfg, input_size=INPUT),
    }
    assert key not in changed and len(changed) == 5
    write_png(unlabeled.records[0].path, np.zeros((50, 70, 3), np.uint8))  # same name, new bytes
    assert store_key(teacher_hash="t", images=unlabeled.records, cfg=cfg, input_size=INPUT) != key


def test_changed_inputs_rebuild_the_store(tmp_path: Path) -> None:
    unlabeled = _unlabeled(tmp_path)
    first = _build(FakeTeacher(*_queries()), unlabeled, tmp_path / "pseudo")
    write_png(unlabeled.records[2].path, np.full((64, 96, 3), 7, np.uint8))
    teacher = FakeTeacher(*_queries())
    second = _build(teacher, unlabeled, tmp_path / "pseudo")
    assert not second.reused and teacher.calls == 2 and second.key != first.key
    teacher = FakeTeacher(*_queries())
    third = _build(teacher, unlabeled, tmp_path / "pseudo", teacher_hash="teacher-b")
    assert not third.reused and teacher.calls == 2 and third.key not in (first.key, second.key)


def test_an_interrupted_run_leaves_no_complete_store(tmp_path: Path) -> None:
    unlabeled = _unlabeled(tmp_path)
    out = tmp_path / "pseudo"
    with pytest.raises(RuntimeError, match="teacher crashed"):
        _build(FakeTeacher(*_queries(), fail_on_call=2), unlabeled, out)
    assert not out.exists() or not any(out.iterdir())
    teacher = FakeTeacher(*_queries())
    store = _build(teacher, unlabeled, out)
    assert not store.reused and teacher.calls == 2
    (store.path / "manifest.json").unlink()  # damaged by hand: rebuilt, not trusted
    teacher = FakeTeacher(*_queries())
    assert not _build(teacher, unlabeled, out).reused and teacher.calls == 2


def test_real_maskformer_teacher(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = PRESETS["teacher-tiny"].with_classes(3).updated(input_size=INPUT)
    teacher = MaskFormerTeacher(model=build_model(config).eval(), criterion=SetCriterion(num_classes=3, num_points=None))
    unlabeled = _unlabeled(tmp_path, sizes=((50, 70), (130, 200)))
    cfg = PseudoLabelConfig(score_threshold=0.0, class_threshold=0.0, min_area=0, max_instances=5, batch_size=2)
    store = _build(teacher, unlabeled, tmp_path / "pseudo", cfg=cfg)
    assert store.stats["instances"] > 0
    for record in store.dataset.records:
        inst = record.instances()
        assert 0 < len(inst) <= 5 and inst.masks.shape[1:] == (record.height, record.width)
        assert inst.masks.sum(axis=0).max() == 1  # disjoint
        assert ((inst.scores > 0) & (inst.scores <= 1)).all() and (inst.labels < 3).all()
        assert (np.diff(inst.scores) <= 0).all()
    assert read_coco(store.path / "pseudo_labels.json", unlabeled.image_root).records == store.dataset.records


def test_an_image_whose_size_disagrees_with_its_record_is_named(tmp_path: Path) -> None:
    unlabeled = _unlabeled(tmp_path, sizes=((50, 70),))
    wrong = replace(unlabeled, records=(replace(unlabeled.records[0], height=51),))
    with pytest.raises(DatasetError, match=r"img0\.png: image is 50x70 \(HxW\) but the dataset says 51x70"):
        _build(FakeTeacher(*_queries()), wrong, tmp_path / "pseudo")
    assert not any((tmp_path / "pseudo").iterdir())
