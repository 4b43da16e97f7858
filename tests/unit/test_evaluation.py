"""Mask AP through pycocotools: sanity, a hand-computed case, input validation, the in-memory path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from scipy import ndimage

from sskd_deploy.data.records import Annotation, CategorySet, Dataset, ImageRecord
from sskd_deploy.errors import DatasetError, InputError
from sskd_deploy.evaluation import EvalResult, evaluate_coco, evaluate_instances, format_eval_table
from sskd_deploy.evaluation.postprocess import instances_to_coco_results, postprocess
from sskd_deploy.preprocess import fit_geometry
from sskd_deploy.segmentation import segmentation_to_rle
from sskd_deploy.structures import Instances, masks_to_rles

CATEGORIES = CategorySet(("car", "person", "bike"), (3, 7, 11))
SIZE = (60, 80)


def rect(y0: int, x0: int, y1: int, x1: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    mask = np.zeros(size, bool)
    mask[y0:y1, x0:x1] = True
    return mask


Scene = dict[int, list[tuple[int, np.ndarray, bool]]]


def make_dataset(gt: Scene, unlabeled: tuple[int, ...] = ()) -> Dataset:
    """image_id -> [(category index, bool mask, iscrowd)] as a Dataset of records."""
    records = []
    for image_id, items in gt.items():
        anns = tuple(Annotation(c, masks_to_rles(m[None])[0], crowd) for c, m, crowd in items)
        records.append(ImageRecord(image_id, f"{image_id}.png", Path(f"/x/{image_id}.png"), *SIZE, anns))
    records += [ImageRecord(i, f"{i}.png", Path(f"/x/{i}.png"), *SIZE, None) for i in unlabeled]
    return Dataset("toy", CATEGORIES, tuple(records), Path("/x/gt.json"), Path("/x"))


@pytest.fixture
def scene() -> Scene:
    return {
        1: [(0, rect(5, 5, 30, 40), False), (1, rect(35, 10, 55, 20), False), (0, rect(0, 60, 20, 80), True)],
        2: [(1, rect(10, 10, 50, 70), False), (2, rect(2, 2, 8, 8), False)],
        3: [],  # an image without objects
    }


def perfect(scene, scores: float = 1.0) -> dict[int, Instances]:
    preds = {}
    for image_id, items in scene.items():
        kept = [(c, m) for c, m, crowd in items if not crowd]
        masks = np.array([m for _, m in kept], bool).reshape(-1, *SIZE)
        preds[image_id] = Instances(SIZE, masks, [c for c, _ in kept], np.full(len(kept), scores))
    return preds


def test_perfect_predictions_give_ap_one(scene) -> None:
    result = evaluate_instances(make_dataset(scene), perfect(scene))
    assert result.ap == result.ap50 == result.ap75 == pytest.approx(1.0)
    assert set(result.per_class) == {"car", "person", "bike"}
    assert all(v == pytest.approx(1.0) for v in result.per_class.values())
    assert result.num_images == 3 and result.num_predictions == 4


def test_degraded_predictions_score_less(scene) -> None:
    dataset, good = make_dataset(scene), perfect(scene)
    erode = np.ones((1, 7, 7))
    eroded = {i: Instances(SIZE, ndimage.binary_erosion(p.masks, erode), p.labels) for i, p in good.items()}
    shuffled = {i: Instances(SIZE, p.masks, (p.labels + 1) % 3) for i, p in good.items()}
    # the correct detections rank below a confident false positive on every image
    wrong = rect(40, 60, 58, 78)
    outranked = {
        i: Instances(SIZE, np.concatenate([p.masks, wrong[None]]), [*p.labels, 0], [*[0.5] * len(p), 0.9])
        for i, p in good.items()
    }
    for preds in (eroded, shuffled, outranked):
        result = evaluate_instances(dataset, preds)
        assert result.ap is not None and result.ap < 1.0
    assert evaluate_instances(dataset, shuffled).ap == pytest.approx(0.0)


def test_no_predictions_give_zero(scene, tmp_path: Path) -> None:
    result = evaluate_instances(make_dataset(scene), {})
    assert result.ap == result.ap50 == result.ap75 == 0.0
    assert result.num_predictions == 0 and all(v == 0.0 for v in result.per_class.values())
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(coco_gt(scene)))
    pred = tmp_path / "pred.json"
    pred.write_text("[]")
    assert evaluate_coco(gt, pred).ap == 0.0


@pytest.mark.parametrize("exact_first", [True, False])
def test_hand_checked_case(exact_first: bool) -> None:
    # Two 10x10 cars; one found exactly, the other by a copy shifted 3 px: IoU 70 / 130 = 0.538,
    # a match at IoU 0.50 only. COCO interpolates precision at 101 recall points.
    a, b = rect(5, 5, 15, 15), rect(30, 40, 40, 50)
    dataset = make_dataset({1: [(0, a, False), (0, b, False)]})
    shifted = rect(30, 43, 40, 53)
    scores = [0.9, 0.8] if exact_first else [0.8, 0.9]
    result = evaluate_instances(dataset, {1: Instances(SIZE, np.stack([a, shifted]), [0, 0], scores)})
    # above 0.5 only one of two objects is found: recall 0.5, precision 1 (or 1/2 when the false
    # positive ranks first) for the 51 recall points 0.00..0.50, and 0 beyond.
    strict = 51 / 101 * (1.0 if exact_first else 0.5)
    assert result.ap50 == pytest.approx(1.0)
    assert result.ap75 == pytest.approx(strict)
    assert result.ap == pytest.approx((1.0 + 9 * strict) / 10)
    assert result.ap_small == pytest.approx(result.ap)  # both objects are 100 px: "small"
    assert result.ap_medium is None and result.ap_large is None
    assert result.per_class == {"car": pytest.approx(result.ap), "person": None, "bike": None}


def coco_gt(scene) -> dict:
    images = [{"id": i, "height": SIZE[0], "width": SIZE[1], "file_name": f"{i}.png"} for i in scene]
    anns = [
        {"id": n, "image_id": i, "category_id": CATEGORIES.source_ids[c], "iscrowd": int(crowd),
         "segmentation": masks_to_rles(m[None])[0], "area": float(m.sum())}
        for n, (i, (c, m, crowd)) in enumerate((i, item) for i, items in scene.items() for item in items)
    ]
    return {"images": images, "annotations": anns, "categories": CATEGORIES.coco_categories()}


def test_file_path_matches_in_memory_path(scene, tmp_path: Path) -> None:
    preds = perfect(scene, scores=0.7)
    preds[2] = Instances(SIZE, ndimage.binary_dilation(preds[2].masks, np.ones((1, 9, 9))), preds[2].labels)
    results = [r for i, inst in preds.items() for r in instances_to_coco_results(inst, i, CATEGORIES)]
    (tmp_path / "gt.json").write_text(json.dumps(coco_gt(scene)))
    (tmp_path / "pred.json").write_text(json.dumps(results))
    from_files = evaluate_coco(tmp_path / "gt.json", tmp_path / "pred.json")
    in_memory = evaluate_instances(make_dataset(scene), preds)
    assert from_files == in_memory
    assert 0.0 < in_memory.ap < 1.0
    assert json.loads(json.dumps(in_memory.to_dict()))["per_class"].keys() == {"car", "person", "bike"}


def test_mask_area_not_box_area_decides_size_range() -> None:
    # A thin diagonal false positive: 50 px of mask, 50x50 box. pycocotools' loadRes would use the
    # box area (medium) and so ignore it in the "small" range; the mask area keeps it small.
    gt_mask = rect(2, 2, 12, 12)
    diagonal = np.zeros(SIZE, bool)
    diagonal[np.arange(5, 55), np.arange(20, 70)] = True
    gt = coco_gt({1: [(0, gt_mask, False)]})
    preds = [{"image_id": 1, "category_id": 3, "segmentation": masks_to_rles(m[None])[0], "score": s}
             for m, s in ((diagonal, 0.9), (gt_mask, 0.8))]
    preds[0]["bbox"] = [20.0, 5.0, 50.0, 50.0]
    result = evaluate_coco(gt, preds)
    assert result.ap_small == pytest.approx(0.5)


def test_polygon_ground_truth_and_missing_area() -> None:
    polygon = [[10, 10, 50, 10, 50, 40, 10, 40]]
    gt = {"images": [{"id": 4, "height": 60, "width": 80}], "categories": [{"id": 1, "name": "box"}],
          "annotations": [{"image_id": 4, "category_id": 1, "segmentation": polygon}]}
    rle = segmentation_to_rle(polygon, 60, 80)  # the ground truth's own rasterisation
    result = evaluate_coco(gt, [{"image_id": 4, "category_id": 1, "segmentation": rle, "score": 1.0}])
    assert result.ap == pytest.approx(1.0) and result.per_class == {"box": pytest.approx(1.0)}


def good_entry(drop: str | None = None) -> dict:
    rle = masks_to_rles(rect(5, 5, 30, 40)[None])[0]
    entry = {"image_id": 1, "category_id": 3, "segmentation": rle, "score": 0.5}
    return {k: v for k, v in entry.items() if k != drop}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        ('{"a": 1}', "expected a JSON list"),
        ([{**good_entry(), "score": None}], "entry 0: 'score' has type NoneType"),
        ([good_entry(), good_entry(drop="score")], "entry 1: missing key 'score'"),
        ([{**good_entry(), "image_id": 99}], "entry 0: image_id 99 is not in the ground truth"),
        ([{**good_entry(), "category_id": 4}], "entry 0: category_id 4 is not in the ground truth"),
        ([{**good_entry(), "segmentation": masks_to_rles(np.zeros((1, 60, 81), bool))[0]}],
         "entry 0: RLE size [60, 81] differs from the image's [height, width] [60, 80]"),
        ([{**good_entry(), "segmentation": {"size": [60, 80], "counts": "0Q8"}}],
         "entry 0: RLE runs cover 257 pixels but the image has 4800"),
        ([{**good_entry(), "segmentation": {"size": [60, 80], "counts": "~~"}}], "counts contain char"),
        ([{**good_entry(), "score": float("nan")}], "entry 0: score nan is not finite"),
    ],
)
def test_bad_prediction_files_name_file_and_entry(scene, tmp_path: Path, content, expected: str) -> None:
    pred = tmp_path / "pred.json"
    pred.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(InputError) as info:
        evaluate_coco(coco_gt(scene), pred)
    assert str(info.value).startswith(str(pred)) and expected in str(info.value)


def test_bad_ground_truth_raises_dataset_error(scene, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        evaluate_coco(tmp_path / "missing.json", [])
    with pytest.raises(DatasetError, match="gt.json: not a COCO instances file"):
        evaluate_coco({"images": []}, [], gt_name="gt.json")
    with pytest.raises(DatasetError, match="has no images"):
        evaluate_coco({"images": [], "annotations": [], "categories": []}, [])
    broken = coco_gt(scene)
    broken["annotations"][1]["segmentation"] = {"size": [60, 80]}
    with pytest.raises(DatasetError, match=r"<ground truth>: annotation 1: segmentation must be"):
        evaluate_coco(broken, [])


def test_unknown_image_and_size_mismatch_in_memory(scene) -> None:
    dataset = make_dataset(scene, unlabeled=(9,))
    assert evaluate_instances(dataset, {9: Instances.empty(SIZE)}).num_images == 3  # unlabeled: skipped
    with pytest.raises(ValueError, match="image_id 42"):
        evaluate_instances(dataset, {42: Instances.empty(SIZE)})
    with pytest.raises(ValueError, match="image_id 1: predictions of size"):
        evaluate_instances(dataset, {1: Instances.empty((10, 10))})


def test_format_eval_table() -> None:
    result = EvalResult(0.5, 0.75, 0.123, None, 0.5, 1.0, {"car": 0.25, "bike": None}, 2, 7)
    console = Console(record=True, width=100)
    console.print(format_eval_table(result, title="demo"))
    text = " ".join(console.export_text().split())  # the caption may wrap
    for expected in ("demo", "AP50", "75.0", "12.3", "100.0", "AP[car]", "25.0", "AP[bike]", "7 predictions"):
        assert expected in text


def test_round_trip_from_stride4_logits_gives_ap_one(tmp_path: Path) -> None:
    # Rectangles of whole 4x4 cells, logits +1.6 on their cells and -1 elsewhere. At a cell border
    # the half-pixel bilinear weights are 5/8 and 3/8, so 0.625 * 1.6 - 0.375 > 0 > 0.375 * 1.6 - 0.625
    # along edges and 0.390625 * 1.6 - 0.609375 > 0 at corners: thresholding recovers each rectangle.
    cells = {1: [(0, (1, 1, 6, 9)), (1, (4, 6, 15, 10)), (2, (12, 15, 14, 20))], 2: [(1, (0, 0, 15, 20))]}
    cells[3] = []
    scene = {i: [(c, rect(4 * y0, 4 * x0, 4 * y1, 4 * x1), False) for c, (y0, x0, y1, x1) in items]
             for i, items in cells.items()}
    info = fit_geometry(SIZE, SIZE)
    results = []
    for image_id, items in cells.items():
        logits = np.full((len(items) + 2, SIZE[0] // 4, SIZE[1] // 4), -1.0, np.float32)
        for k, (_, (y0, x0, y1, x1)) in enumerate(items):
            logits[k, y0:y1, x0:x1] = 1.6
        logits[len(items):, 3:9, 3:9] = 1.6  # two unconfident candidates, dropped by the threshold
        scores = np.array([0.9] * len(items) + [0.01, 0.02], np.float32)
        labels = np.array([c for c, _ in items] + [0, 1], np.int64)
        inst = postprocess(scores, labels, logits, info, score_threshold=0.05)
        expected = np.array([m for _, m, _ in scene[image_id]], bool).reshape(-1, *SIZE)
        np.testing.assert_array_equal(inst.masks, expected)
        results += instances_to_coco_results(inst, image_id, CATEGORIES)
    (tmp_path / "gt.json").write_text(json.dumps(coco_gt(scene)))
    (tmp_path / "pred.json").write_text(json.dumps(results))
    result = evaluate_coco(tmp_path / "gt.json", tmp_path / "pred.json")
    assert result.ap == pytest.approx(1.0) and result.num_predictions == 4
