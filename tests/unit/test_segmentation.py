"""COCO segmentation checks: every valid form agrees with pycocotools, every malformed one is named."""

from __future__ import annotations

import numpy as np
import pytest

from sskd_deploy.segmentation import polygons_to_rle, segmentation_problem, segmentation_to_rle
from sskd_deploy.structures import masks_to_rles, rle_area
from tests.unit.readers_fixtures import compressed_counts, uncompressed_counts


def test_segmentation_forms_agree_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random((h, w)) < rng.random()
        (expected,) = masks_to_rles(mask[None])
        assert segmentation_to_rle({"size": [h, w], "counts": compressed_counts(mask)}, h, w) == expected
        assert segmentation_to_rle({"size": [h, w], "counts": uncompressed_counts(mask)}, h, w) == expected


def test_compressed_check_accepts_pycocotools_output_and_counts_pixels() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((20, 37, 53)) < rng.random((20, 1, 1))
    masks[0] = False
    masks[1] = True
    for rle in masks_to_rles(masks):
        assert segmentation_problem(rle, 37, 53) is None
        wrong = {"size": [37, 54], "counts": rle["counts"]}
        assert segmentation_problem(wrong, 37, 54) == "RLE runs cover 1961 pixels but the image has 1998"


def test_polygons_rasterise_and_may_overshoot_by_one_pixel() -> None:
    square = [[0, 0, 10, 0, 10, 10, 0, 10]]
    assert rle_area(polygons_to_rle(square, 10, 10)) == 100
    assert segmentation_to_rle([[-1, -1, 11, -1, 11, 11]], 10, 10)["size"] == [10, 10]


SIZE_68 = {"size": [6, 8]}
CHARS = "compressed RLE counts contain characters outside '0'..'o', not a valid COCO RLE string"


@pytest.mark.parametrize(
    ("segmentation", "problem"),
    [
        ("oops", "segmentation must be a polygon list or an RLE object, found a str"),
        ([], "segmentation is an empty polygon list"),
        ([[1, 1, 2, 2, float("nan"), 3]], "polygon 0 is not a flat list of finite numbers"),
        ([[1, 1, 2, 2, 3, 3], [1, True, 2, 2, 3, 3]], "polygon 1 is not a flat list of finite numbers"),
        ([[1, 1, 2, 2]], "polygon 0 has 4 coordinates, expected an even number >= 6"),
        ([[1, 1, 2, 2, 3, 3, 4]], "polygon 0 has 7 coordinates, expected an even number >= 6"),
        ([[1, 1, 2, 2, 9.5, 3]], "polygon 0 has points outside the image (width 8, height 6)"),
        (SIZE_68, "segmentation must be an RLE object with 'size' and 'counts' (no 'counts')"),
        ({"size": (6, 8), "counts": "0"}, "RLE size (6, 8) is not [height, width]"),
        ({"size": [6, True], "counts": "0"}, "RLE size [6, True] is not [height, width]"),
        ({"size": [8, 6], "counts": "0"}, "RLE size [8, 6] differs from the image's [height, width] [6, 8]"),
        ({**SIZE_68, "counts": None}, "RLE counts must be a string or a list of integers, found a NoneType"),
        ({**SIZE_68, "counts": [40, 8.0]}, "uncompressed RLE counts must be non-negative integers"),
        ({**SIZE_68, "counts": [50, -2]}, "uncompressed RLE counts must be non-negative integers"),
        ({**SIZE_68, "counts": [40, 7]}, "RLE runs cover 47 pixels but the image has 48"),
        ({**SIZE_68, "counts": ""}, "RLE runs cover 0 pixels but the image has 48"),
        ({**SIZE_68, "counts": "0a}"}, CHARS),
        ({**SIZE_68, "counts": "0\u00e9"}, CHARS),
        ({**SIZE_68, "counts": "0P"}, "compressed RLE counts end in the middle of a number, not a valid"),
        ({**SIZE_68, "counts": "PPPPPPP0"}, "compressed RLE counts contain an overlong number, not a valid"),
        ({**SIZE_68, "counts": "100O"}, "compressed RLE counts decode to a negative run, not a valid"),
    ],
)
def test_malformed_segmentations_are_named(segmentation, problem: str) -> None:
    found = segmentation_problem(segmentation, 6, 8)
    assert found is not None and found.startswith(problem)
    with pytest.raises(ValueError) as err:
        segmentation_to_rle(segmentation, 6, 8)
    assert str(err.value) == found


def test_a_seven_character_number_is_not_overlong() -> None:
    assert segmentation_problem({**SIZE_68, "counts": "PPPPPP0" + "`1"}, 6, 8) is None  # runs 0, 48
