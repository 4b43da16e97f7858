"""Stage 1 with the Grounded-SAM2 teacher end to end on tiny random weights: zero-shot row, 1a and
1b adapt only the configured parts and write loadable weights directories, the pseudo-label stores
feed 1b and stage 2 unchanged, and a rerun skips finished stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sskd_deploy.cli import main
from sskd_deploy.models.grounded_sam2 import missing_weight_files
from tests.grounded_tiny import write_tiny_weights

pytest.importorskip("transformers")

CONFIG = """
run: {{out_dir: {out}, seed: 0, steps: [train]}}
data:
  root: {root}
  synth: {{seed: 1, num_train: 10, num_val: 3, labeled_fraction: 0.3, image_size: [64, 96]}}
train:
  teacher: grounded-sam2
  grounded_sam2: {{weights: {weights}, box_threshold: 0.05, min_area: 4, max_instances: 5, batch_size: 4,
                  trainable: [grounding_heads, grounding_decoder, sam2_neck, sam2_mask_decoder]}}
  stages: [teacher_1a, teacher_1b, student_2]
  input_size: [64, 96]
  teacher_1a: {{steps: 3, batch_size: 2, lr: 0.001}}
  teacher_1b: {{steps: 3, batch_size: 1, lr: 0.001}}
  student_2: {{steps: 2, batch_size: 1, lr: 0.0004}}
  optim: {{warmup_steps: 1, checkpoint_every: 2, log_every: 1}}
  pxl: {{num_negatives: 8, max_anchors: 32, hidden_dim: 16, embed_dim: 8}}
  eval_batch_size: 4
  device: cpu
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("gtrain")
    weights = write_tiny_weights(tmp / "weights")
    config = tmp / "train.yaml"
    config.write_text(CONFIG.format(out=tmp / "run", root=tmp / "synth", weights=weights))
    assert main(["train", "--config", str(config)]) == 0
    return config, tmp / "run" / "train", weights


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_stages_write_weights_directories_and_records(run) -> None:
    _, train, weights = run
    summary = json.loads((train / "summary.json").read_text())
    assert summary["order"] == ["teacher_1a", "teacher_1b", "student_2"]
    for stage in ("teacher_1a", "teacher_1b"):
        record = json.loads((train / stage / "complete.json").read_text())
        assert record["teacher"] == "grounded-sam2" and record["checkpoint"] == "weights" and record["steps"] == 3
        assert missing_weight_files(train / stage / "weights") == {"grounding_dino": [], "sam2": []}
        assert {"ap", "ap50", "per_class"} <= set(json.loads((train / stage / "eval.json").read_text()))
        logged = [json.loads(line) for line in (train / stage / "metrics.jsonl").read_text().splitlines()]
        assert {"sup_box", "sup_mask", "pxl", "margin"} <= set(logged[-1])
    assert "semi" in logged[-1]  # 1b: labeled + pseudo-labeled
    first = json.loads((train / "teacher_1a" / "complete.json").read_text())
    assert "zero_shot_ap" in first and (train / "teacher_1a" / "zero_shot_eval.json").is_file()
    assert (train / "student_2" / "complete.json").is_file()


def test_only_the_configured_parts_moved(run) -> None:
    _, train, weights = run
    for sub, frozen, trained in (("grounding_dino", "model.backbone.", "model.decoder."),
                                 ("sam2", "vision_encoder.backbone.", "mask_decoder.")):
        start, adapted = _state(weights / sub), _state(train / "teacher_1a" / "weights" / sub)
        assert set(start) == set(adapted)
        assert all(torch.equal(start[k], adapted[k]) for k in start if k.startswith(frozen))
        assert any(not torch.equal(start[k], adapted[k]) for k in start if k.startswith(trained))
    # 1b restarts from theta_T0, so it differs from 1a
    a = _state(train / "teacher_1a" / "weights" / "sam2")
    b = _state(train / "teacher_1b" / "weights" / "sam2")
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("mask_decoder."))


def test_pseudo_label_stores_come_from_the_adapted_teachers(run) -> None:
    _, train, _ = run
    stores = sorted((train / "pseudo").iterdir())
    assert len(stores) == 2  # 1a's labels for 1b, 1b's labels for stage 2
    for store in stores:
        manifest = json.loads((store / "manifest.json").read_text())
        assert manifest["teacher_hash"].startswith("grounded-sam2:") and manifest["rule"]["class_threshold"] == 0.05
        assert manifest["stats"]["images"] == 7
        labels = json.loads((store / "pseudo_labels.json").read_text())
        assert {"images", "annotations", "categories"} <= set(labels)


def test_a_rerun_skips_finished_stages_and_the_weights_serve_zero_shot(run, tmp_path: Path, capsys) -> None:
    config, train, _ = run
    stamp = (train / "teacher_1b" / "weights" / "sam2" / "model.safetensors").stat().st_mtime_ns
    assert main(["train", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.count("complete, skipped") == 3
    assert (train / "teacher_1b" / "weights" / "sam2" / "model.safetensors").stat().st_mtime_ns == stamp
    assert "zero-shot (foundation model)" in out
    result = tmp_path / "zs"
    assert main(["teacher", "zero-shot", "--weights", str(train / "teacher_1b" / "weights"), "--data",
                 str(train.parent.parent / "synth"), "--out", str(result), "--input-size", "64x96"]) == 0
    assert json.loads((result / "eval.json").read_text())["num_images"] == 3
