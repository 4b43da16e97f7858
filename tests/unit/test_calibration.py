"""Calibration-image selection: deterministic, hashed, content-keyed; bad input fails naming the file."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")

from sskd_deploy.errors import InputError
from sskd_deploy.export.calibration import (
    ImageCalibrationReader,
    calibration_key,
    select_calibration_images,
)
from sskd_deploy.spec import IOSpec

SIZES = [(48, 80), (120, 64), (64, 96), (200, 150), (33, 257)]


def write_images(folder, sizes=SIZES, seed=0, gray=True):
    """Procedural PNGs (gradients + noise) of several sizes; one grayscale; a non-image file beside them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * (i + 2)) % 256, (yy * 3 + 40 * i) % 256, (xx + yy) % 256], -1)
        img = np.clip(img + rng.integers(-25, 25, img.shape), 0, 255).astype(np.uint8)
        sub = folder / "sub" if i % 2 else folder
        sub.mkdir(exist_ok=True)
        Image.fromarray(img).save(sub / f"img_{i}.png")
    if gray:
        Image.fromarray(rng.integers(0, 256, (70, 90), dtype=np.uint8), mode="L").save(folder / "gray.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def quiet_select(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return select_calibration_images(*args, **kwargs)


def test_folder_selection_records_hashes_and_counts(tmp_path) -> None:
    folder = write_images(tmp_path / "unlabeled")
    with pytest.warns(UserWarning, match="only 6 calibration images"):
        sel = select_calibration_images(folder, count=100, seed=0)
    assert len(sel.images) == sel.available == 6 and sel.ignored_files == 1
    assert [im.rel_path for im in sel.images] == sorted(im.rel_path for im in sel.images)
    assert "sub/img_1.png" in [im.rel_path for im in sel.images]
    assert all(len(im.sha256) == 64 for im in sel.images) and sel.warnings
    entry = sel.to_dict()
    assert entry["count"] == 6 and entry["images"][0].keys() == {"rel_path", "sha256", "height", "width"}
    assert quiet_select(folder, count=6, min_images=4).warnings == ()


def test_seeded_sample_is_deterministic(tmp_path) -> None:
    folder = write_images(tmp_path / "u")
    a, b = quiet_select(folder, count=3, seed=1), quiet_select(folder, count=3, seed=1)
    assert a == b and len(a.images) == 3 and a.available == 6
    others = {tuple(im.rel_path for im in quiet_select(folder, count=3, seed=s).images) for s in range(6)}
    assert len(others) > 1  # the seed matters


def test_explicit_list_of_paths(tmp_path) -> None:
    folder = write_images(tmp_path / "u")
    paths = sorted(folder.rglob("*.png"))[:4]
    sel = quiet_select([str(p) for p in paths], count=10)
    assert len(sel.images) == 4 and sel.paths == tuple(str(p) for p in sorted(paths))


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "listed-missing"])
def test_bad_calibration_input_names_the_path(tmp_path, case) -> None:
    if case == "missing":
        source, culprit = tmp_path / "nope", "nope"
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "readme.md").write_text("x")
        source, culprit = tmp_path / "empty", "empty"
    elif case == "corrupt":
        source = write_images(tmp_path / "u")
        (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        culprit = "broken.png"
    else:
        source, culprit = [tmp_path / "gone.jpg"], "gone.jpg"
    with pytest.raises(InputError, match=culprit):
        quiet_select(source, count=8)


def test_reader_batches_preprocessed_uint8(tmp_path) -> None:
    spec = IOSpec(model_name="t", class_names=("a",), input_size=(64, 96), top_k=4)
    sel = quiet_select(write_images(tmp_path / "u"), count=8)
    reader = ImageCalibrationReader(sel, spec, batch_size=4)
    batches = [b for b in iter(reader.get_next, None)]
    assert len(batches) == len(reader) == 2 and reader.batches_served == 2
    assert batches[0]["images"].dtype == np.uint8 and batches[0]["images"].shape == (4, 3, 64, 96)
    assert batches[1]["images"].shape == (2, 3, 64, 96)
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["images"], batches[0]["images"])


def test_key_follows_content_not_names(tmp_path) -> None:
    folder = write_images(tmp_path / "a")
    base = quiet_select(folder, count=10)
    key = calibration_key("g" * 64, base, (64, 96), "minmax", {"x": 1})
    renamed = tmp_path / "b"
    shutil.copytree(folder, renamed)
    (renamed / "img_0.png").rename(renamed / "zzz_renamed.png")
    assert calibration_key("g" * 64, quiet_select(renamed, count=10), (64, 96), "minmax", {"x": 1}) == key
    changed = tmp_path / "c"
    shutil.copytree(folder, changed)
    Image.fromarray(np.zeros((48, 80, 3), np.uint8)).save(changed / "img_0.png")
    assert calibration_key("g" * 64, quiet_select(changed, count=10), (64, 96), "minmax", {"x": 1}) != key
    for other in [("h" * 64, base, (64, 96), "minmax", {"x": 1}), ("g" * 64, base, (96, 64), "minmax", {"x": 1}),
                  ("g" * 64, base, (64, 96), "entropy", {"x": 1}), ("g" * 64, base, (64, 96), "minmax", {"x": 2})]:
        assert calibration_key(*other) != key
