"""``sskd-deploy train`` end to end on very small data: every stage runs and writes its outputs,
finished stages are skipped on a rerun, ``--stages`` selects, a missing prerequisite is a clear
error, and a user's COCO data with sparse category ids, grayscale and RGBA images trains a model
whose heads and IOSpec follow the data's classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from sskd_deploy.cli import main

STAGE_NAMES = ("teacher_1a", "teacher_1b", "student_2", "student_3", "supervised")

TINY_TRAIN = """
run: {{out_dir: {out}, seed: 0, steps: [train]}}
data:
  root: {root}
  synth: {{seed: 1, num_train: 10, num_val: 3, labeled_fraction: 0.3, image_size: [64, 96]}}
train:
  input_size: [64, 96]
  teacher_1a: {{steps: 3, batch_size: 2, lr: 0.0002}}
  teacher_1b: {{steps: 3, batch_size: 1, lr: 0.0002}}
  student_2: {{steps: 3, batch_size: 1, lr: 0.0004}}
  student_3: {{steps: 2, batch_size: 2, lr: 0.0001}}
  optim: {{warmup_steps: 1, checkpoint_every: 2, log_every: 1}}
  pxl: {{num_negatives: 8, max_anchors: 32, hidden_dim: 16, embed_dim: 8}}
  pseudo: {{score_threshold: 0.0, class_threshold: 0.0, min_area: 4, max_instances: 3, batch_size: 4}}
  eval_batch_size: 4
  eval_every: 2
  eval_train_images: 2
  device: cpu
"""


def _write_config(tmp_path: Path, text: str, **fields) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(text.format(**fields))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """All stages once; returns (config file, run dir)."""
    tmp = tmp_path_factory.mktemp("train")
    config = _write_config(tmp, TINY_TRAIN, out=tmp / "run", root=tmp / "synth")
    assert main(["train", "--config", str(config)]) == 0
    return config, tmp / "run"


@pytest.mark.slow
def test_all_stages_write_their_outputs(trained) -> None:
    _, run = trained
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert tuple(summary["order"]) == STAGE_NAMES and set(summary["stages"]) == set(STAGE_NAMES)
    for stage in STAGE_NAMES:
        out = run / "train" / stage
        record = json.loads((out / "complete.json").read_text())
        assert record["stage"] == stage and 0.0 <= record["ap"] <= 1.0
        assert (out / "model.safetensors").stat().st_size > 0
        assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses, evals = [r for r in lines if "loss" in r], [r for r in lines if "val_ap" in r]
        assert losses and {"step", "loss", "sup", "sup_class", "sup_mask", "sup_dice"} <= set(losses[-1])
        assert json.loads((out / "eval.json").read_text())["ap"] == pytest.approx(record["ap"])
        # validation during the stage (train.eval_every: 2), then the final model as the curve's last point
        assert [r["step"] for r in evals] == [*range(2, record["steps"], 2), record["steps"]]
        assert evals[-1]["val_ap"] == pytest.approx(100 * record["ap"], abs=0.01)
        assert {"train_ap", "train_ap50", "eval_seconds"} <= set(evals[-1])
    # the stages with L_pxl log it and its diagnostics; stage 3 and the baseline do not
    first = json.loads((run / "train" / "student_2" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"pxl", "semi", "margin", "false_negative_rate"} <= set(first)
    last = json.loads((run / "train" / "student_3" / "metrics.jsonl").read_text().splitlines()[0])
    assert "pxl" not in last and "semi" not in last
    assert (run / "train" / "config.yaml").is_file()
    assert len(list((run / "train" / "pseudo").glob("*/pseudo_labels.json"))) == 2  # after 1a and after 1b
    # the shipped teacher, sliced to the data's names, is scored zero-shot before stage 1a trains
    zero_shot = json.loads((run / "train" / "teacher_1a" / "zero_shot_eval.json").read_text())
    first = json.loads((run / "train" / "teacher_1a" / "complete.json").read_text())
    assert zero_shot["classes"] == ["disc", "box", "triangle", "star", "ring", "cross"]
    assert first["zero_shot_ap"] == pytest.approx(zero_shot["ap"])
    # so is the whole shipped student before the supervised baseline trains it (its starting point)
    student = json.loads((run / "train" / "supervised" / "zero_shot_eval.json").read_text())
    baseline = json.loads((run / "train" / "supervised" / "complete.json").read_text())
    assert student["weights"].endswith("student-tiny.safetensors")
    assert baseline["zero_shot_ap"] == pytest.approx(student["ap"])


@pytest.mark.slow
def test_rerun_skips_finished_stages_and_selects(trained, capsys) -> None:
    config, run = trained
    before = {s: (run / "train" / s / "model.safetensors").stat().st_mtime_ns for s in STAGE_NAMES}
    assert main(["train", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.count("complete, skipped") == len(STAGE_NAMES)
    after = {s: (run / "train" / s / "model.safetensors").stat().st_mtime_ns for s in STAGE_NAMES}
    assert before == after
    assert main(["train", "--config", str(config), "--stages", "student_3,supervised"]) == 0
    assert "teacher_1a" not in capsys.readouterr().out


def test_missing_prerequisite_and_unknown_stage(tmp_path: Path, capsys) -> None:
    config = _write_config(tmp_path, TINY_TRAIN, out=tmp_path / "run", root=tmp_path / "synth")
    assert main(["train", "--config", str(config), "--stages", "student_3"]) == 2
    assert "student_2" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--stages", "student_9"]) == 2
    assert "student_9" in capsys.readouterr().err


def test_truth_as_pseudo_labels_is_the_ceiling_check(tmp_path: Path, capsys) -> None:
    """train.pseudo.source: truth trains stage 2 on the unlabeled images' withheld labels, with no teacher
    stage needed; the store scores a perfect mask AP against those labels and the stage is marked."""
    config = _write_config(tmp_path, TINY_TRAIN, out=tmp_path / "run", root=tmp_path / "synth")
    assert main(["train", "--config", str(config), "--stages", "student_2",
                 "--set", "train.pseudo.source=truth"]) == 0
    out = capsys.readouterr().out
    out = " ".join(out.split())
    assert "withheld ground truth" in out and "(truth as pseudo-labels)" in out
    train = tmp_path / "run" / "train"
    assert not (train / "teacher_1b").exists()
    store = train / "pseudo" / "truth"
    quality = json.loads((store / "quality.json").read_text())
    assert quality["ap"] == pytest.approx(1.0)
    labels = json.loads((store / "pseudo_labels.json").read_text())
    truth = json.loads((tmp_path / "synth" / "annotations" / "train_unlabeled.json").read_text())
    assert len(labels["images"]) == len(truth["images"]) == 7 and len(labels["annotations"]) > 0
    record = json.loads((train / "student_2" / "complete.json").read_text())
    assert record["pseudo_labels"] == "truth"
    # stage 3 built on it carries the mark; the other source never reuses or builds on these stages
    assert main(["train", "--config", str(config), "--stages", "student_3",
                 "--set", "train.pseudo.source=truth"]) == 0
    assert json.loads((train / "student_3" / "complete.json").read_text())["pseudo_labels"] == "truth"
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--stages", "student_2,student_3"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "student_2 was trained with train.pseudo.source: truth" in err


def _coco_user_data(root: Path) -> None:
    """A labeled and a val COCO file with category ids 5/9/17, RGB, grayscale and RGBA images of
    odd sizes, and a folder of unlabeled images."""
    rng = np.random.default_rng(0)
    modes = ["RGB", "L", "RGBA"]
    for split, count in (("labeled", 4), ("val", 2)):
        images, anns = [], []
        for i in range(count):
            h, w = 70 + 7 * i, 90 + 5 * i
            name = f"{split}_{i}.png"
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(modes[i % 3]).save(root / name)
            images.append({"id": 100 + i, "file_name": name, "height": h, "width": w})
            for j, cat in enumerate((5, 9, 17)):
                mask = np.zeros((h, w), np.uint8)
                mask[10 + 15 * j : 22 + 15 * j, 10 + 20 * j : 30 + 20 * j] = 1
                rle = mask_utils.encode(np.asfortranarray(mask))
                anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cat, "iscrowd": 0,
                             "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                             "area": int(mask.sum()), "bbox": [10 + 20 * j, 10 + 15 * j, 20, 12]})
        cats = [{"id": c, "name": n} for c, n in ((5, "bolt"), (9, "nut"), (17, "washer"))]
        (root / f"{split}.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    folder = root / "unlabeled"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (60 + i, 80, 3), dtype=np.uint8)).convert(modes[i]).save(folder / f"u{i}.png")


def _user_config(root: Path, train: str) -> Path:
    """A config training on :func:`_coco_user_data` under ``root`` with the ``train:`` section ``train``."""
    _coco_user_data(root)
    config = root / "user.yaml"
    config.write_text(f"""
run: {{out_dir: {root / "run"}}}
data:
  labeled: {{kind: coco, path: {root / "labeled.json"}, images: {root}}}
  val: {{kind: coco, path: {root / "val.json"}, images: {root}}}
  unlabeled: {{kind: folder, path: {root / "unlabeled"}}}
train:
{train}""")
    return config


def test_class_names_outside_the_shipped_teachers_vocabulary_are_refused(tmp_path: Path, capsys) -> None:
    config = _user_config(tmp_path, "  input_size: [64, 96]\n  device: cpu\n")
    assert main(["train", "--config", str(config), "--stages", "teacher_1a"]) == 2
    err = capsys.readouterr().err
    assert "teacher-tiny.safetensors" in err and "'bolt'" in err and "hexagon" in err and "teacher_weights: null" in err
    assert not (tmp_path / "run" / "train" / "teacher_1a" / "complete.json").exists()


def test_truth_as_pseudo_labels_needs_withheld_labels(tmp_path: Path, capsys) -> None:
    config = _user_config(tmp_path, "  input_size: [64, 96]\n  teacher_weights: null\n  device: cpu\n"
                                    "  pseudo: {source: truth}\n")
    assert main(["train", "--config", str(config), "--stages", "student_2"]) == 2
    err = capsys.readouterr().err
    assert "train.pseudo.source: truth" in err and "unlabeled" in err
    assert not (tmp_path / "run" / "train" / "student_2" / "complete.json").exists()


def test_user_coco_data_sizes_the_heads(tmp_path: Path) -> None:
    from sskd_deploy.models.checkpoint import read_checkpoint

    config = _user_config(tmp_path, """  input_size: [64, 96]
  supervised: {steps: 2, batch_size: 2, lr: 0.0001}
  optim: {warmup_steps: 1}
  device: cpu
""")
    assert main(["train", "--config", str(config), "--stages", "supervised"]) == 0
    checkpoint = read_checkpoint(tmp_path / "run" / "train" / "supervised" / "model.safetensors")
    assert checkpoint.model_config.num_classes == 3
    assert tuple(checkpoint.spec.class_names) == ("bolt", "nut", "washer")
    # the default student (whole pretrained student-tiny) keeps its weights; names it never saw start new rows
    from sskd_deploy.weights import shipped_path

    init = read_checkpoint(tmp_path / "run" / "train" / "init" / "student.safetensors")
    assert init.extra["new_class_rows"] == ["bolt", "nut", "washer"]
    shipped = read_checkpoint(shipped_path("student", "student-tiny", "shipped-whole"))
    key = "encoder.backbone.embeddings.cls_token"
    assert torch.equal(init.state_dict[key], shipped.state_dict[key].float())
