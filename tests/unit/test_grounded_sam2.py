"""The Grounded-SAM2 teacher on tiny random configurations of the real transformers classes.

Forward contract, class prompt and token spans, pseudo-labels in the very format the MaskFormer
teacher's store has, adaptation steps (box + mask + L_pxl) lowering the loss, trainable parts,
missing-weights messages and --allow-download, the real configurations' parameter counts, and
the ``teacher zero-shot`` / ``teacher label`` commands.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sskd_deploy.cli import main
from sskd_deploy.config.teacher import TEACHER_PARTS, GroundedSam2Config
from sskd_deploy.errors import InputError, SSKDError
from sskd_deploy.models.grounded_sam2 import (
    GroundedSam2Teacher,
    class_prompt,
    count_large_parameters,
    jitter_boxes,
    load_grounded_sam2,
    masks_to_boxes_cxcywh,
    missing_weight_files,
)
from tests.grounded_tiny import tiny_models, tiny_tokenizer, write_tiny_weights

transformers = pytest.importorskip("transformers")

CLASSES = ("disc", "box", "traffic_light")
INPUT = (64, 96)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("gsam") / "weights")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    assert main(["data", "synth", "--out", str(root), "--num-train", "6", "--num-val", "3",
                 "--labeled-fraction", "0.5", "--image-size", "64x96"]) == 0
    return root


def _teacher(weights: Path, **cfg) -> GroundedSam2Teacher:
    return load_grounded_sam2(weights, cfg=GroundedSam2Config(**cfg), class_names=CLASSES)


def test_predict_queries_keeps_the_teacher_contract(weights: Path) -> None:
    teacher = _teacher(weights, max_instances=7).eval()
    images = torch.randint(0, 256, (2, 3, *INPUT), dtype=torch.uint8)
    out = teacher.predict_queries(images)
    assert out["class_prob"].shape == (2, 7, len(CLASSES) + 1)
    assert out["mask_prob"].shape == (2, 7, INPUT[0] // 4, INPUT[1] // 4)
    assert out["boxes"].shape == (2, 7, 4)
    real = out["class_prob"][..., :-1]
    assert torch.allclose(out["class_prob"][..., -1], 1 - real.amax(-1))
    assert ((out["mask_prob"] >= 0) & (out["mask_prob"] <= 1)).all()
    # best boxes first: the selected queries' box scores are the top-7 of all queries, descending
    assert (real.amax(-1).diff(dim=1) <= 1e-6).all()
    again = teacher.predict_queries(images)
    assert torch.equal(again["mask_prob"], out["mask_prob"])  # deterministic in eval mode
    assert teacher.dense_features(images).shape == (2, teacher.feature_channels, 8, 8)  # SAM2 stride 16 at 128


def test_class_prompt_gives_each_class_its_tokens() -> None:
    tokenizer = tiny_tokenizer()
    prompt, spans, length = class_prompt(tokenizer, CLASSES, 128)
    assert prompt == "disc . box . traffic light ."
    ids = tokenizer(prompt)["input_ids"]
    assert length == len(ids)
    words = ["".join(tokenizer.convert_ids_to_tokens([ids[i]])[0].replace("##", "") for i in span) for span in spans]
    assert words == ["disc", "box", "trafficlight"]
    assert all(ids[i] not in (101, 102, 1012) for span in spans for i in span)
    with pytest.raises(SSKDError, match=r"cannot be prompted"):
        class_prompt(tokenizer, ["a.b"], 128)
    with pytest.raises(SSKDError, match=r"more than Grounding DINO's max_text_len 8"):
        class_prompt(tokenizer, CLASSES, 8)


def test_class_scores_are_the_best_token_of_each_class(weights: Path) -> None:
    teacher = _teacher(weights)
    logits = torch.full((1, 2, teacher.token_map.shape[1]), -20.0)
    _, spans, _ = class_prompt(teacher.tokenizer, CLASSES, teacher.token_map.shape[1])
    logits[0, 0, spans[2][1]] = 3.0  # query 0: one token of "traffic light"
    logits[0, 1, spans[0][0]] = 0.0  # query 1: "disc" at 0.5
    scores = teacher.class_scores(logits)
    assert torch.allclose(scores[0, 0], torch.tensor([0.0, 0.0, torch.sigmoid(torch.tensor(3.0))]), atol=1e-6)
    assert torch.allclose(scores[0, 1], torch.tensor([0.5, 0.0, 0.0]), atol=1e-6)


def test_boxes_from_masks_and_jitter() -> None:
    masks = torch.zeros(2, 10, 20, dtype=torch.bool)
    masks[0, 2:6, 4:14] = True
    masks[1, :, :] = True
    boxes = masks_to_boxes_cxcywh(masks)
    assert torch.allclose(boxes[0], torch.tensor([9 / 20, 4 / 10, 10 / 20, 4 / 10]))
    assert torch.allclose(boxes[1], torch.tensor([0.5, 0.5, 1.0, 1.0]))
    assert masks_to_boxes_cxcywh(torch.zeros(0, 10, 20, dtype=torch.bool)).shape == (0, 4)
    xyxy = torch.tensor([[0.2, 0.2, 0.6, 0.4]])
    moved = jitter_boxes(xyxy, 0.1, torch.Generator().manual_seed(0))
    assert (moved[:, 2:] > moved[:, :2]).all()
    assert ((moved - xyxy).abs()[0] <= torch.tensor([0.04, 0.02, 0.04, 0.02]) + 1e-6).all()
    assert torch.equal(jitter_boxes(xyxy, 0.0), xyxy)


def test_every_parameter_has_one_part_and_trainable_selects(weights: Path) -> None:
    teacher = _teacher(weights, trainable=("grounding_heads", "sam2_mask_decoder"))
    parts = teacher.part_parameters()
    assert set(parts) == set(TEACHER_PARTS)
    ids = [id(p) for params in parts.values() for p in params]
    assert len(ids) == len(set(ids)) == len(list(teacher.parameters()))
    for name, params in parts.items():
        assert all(p.requires_grad == (name in ("grounding_heads", "sam2_mask_decoder")) for p in params), name
    groups = teacher.parameter_groups()
    assert groups["encoder"] == [] and len(groups["decoder"]) == len(list(teacher.trainable_parameters()))
    wide = _teacher(weights, trainable=("grounding_backbone", "sam2_neck"))
    assert {id(p) for p in wide.parameter_groups()["encoder"]} == {id(p) for p in wide.part_parameters()[
        "grounding_backbone"]}
    with pytest.raises(ValueError, match="trainable lists a part twice"):
        GroundedSam2Config(trainable=("sam2_neck", "sam2_neck"))
    with pytest.raises(ValueError):
        GroundedSam2Config(trainable=("sam2_everything",))


def test_pseudo_labels_have_the_store_format(weights: Path, tmp_path: Path) -> None:
    """The grounded teacher's store has exactly the files, keys and annotation fields of the MaskFormer
    teacher's, loads back as the same records, and is reused on a rerun."""
    from sskd_deploy.config.model import PRESETS
    from sskd_deploy.data.layout import open_dataset_dir
    from sskd_deploy.models.criterion import SetCriterion
    from sskd_deploy.models.maskformer import build_model
    from sskd_deploy.models.teacher import MaskFormerTeacher
    from sskd_deploy.training.grounded import labeling_config, teacher_identity
    from sskd_deploy.training.pseudo_labels import build_pseudo_labels

    root = tmp_path / "data"
    assert main(["data", "synth", "--out", str(root), "--num-train", "4", "--num-val", "1",
                 "--labeled-fraction", "0.5", "--image-size", "64x96"]) == 0
    train = open_dataset_dir(root)["train"]
    names = train.categories.names
    unlabeled = replace(train, records=tuple(replace(r, annotations=None) for r in train.records))
    grounded = load_grounded_sam2(weights, cfg=GroundedSam2Config(box_threshold=0.05, min_area=0, batch_size=2),
                                  class_names=names)
    calls = []
    store = build_pseudo_labels(grounded, unlabeled, out_root=tmp_path / "pseudo",
                                teacher_hash=teacher_identity(grounded), input_size=INPUT,
                                cfg=labeling_config(grounded), progress=lambda d, t: calls.append(d))
    assert calls == [2, 4] and store.stats["instances"] > 0
    for record in store.dataset.records:
        inst = record.instances()
        assert inst.masks.shape[1:] == (record.height, record.width)
        assert len(inst) <= 100 and (len(inst) == 0 or inst.masks.sum(axis=0).max() == 1)  # overlaps resolved
    torch.manual_seed(0)
    config = PRESETS["teacher-tiny"].with_classes(len(names)).updated(input_size=INPUT)
    maskformer = MaskFormerTeacher(model=build_model(config).eval(), criterion=SetCriterion(num_classes=len(names)))
    reference = build_pseudo_labels(maskformer, unlabeled, out_root=tmp_path / "pseudo", teacher_hash="mf",
                                    input_size=INPUT, cfg=labeling_config(grounded))
    assert sorted(p.name for p in store.path.iterdir()) == sorted(p.name for p in reference.path.iterdir())
    ours, theirs = (json.loads((s.path / "pseudo_labels.json").read_text()) for s in (store, reference))
    assert set(ours) == set(theirs) and ours["categories"] == theirs["categories"] and ours["images"] == theirs["images"]
    assert {k for a in ours["annotations"] for k in a} == {k for a in theirs["annotations"] for k in a}
    manifests = [json.loads((s.path / "manifest.json").read_text()) for s in (store, reference)]
    assert set(manifests[0]) == set(manifests[1]) and manifests[0]["rule"]["class_threshold"] == 0.05
    again = build_pseudo_labels(grounded, unlabeled, out_root=tmp_path / "pseudo",
                                teacher_hash=teacher_identity(grounded), input_size=INPUT,
                                cfg=labeling_config(grounded))
    assert again.reused and again.key == store.key and again.dataset.records == store.dataset.records


def _batch(n: int = 2):
    torch.manual_seed(0)
    images = torch.randint(0, 60, (n, 3, *INPUT), dtype=torch.uint8)
    targets, ids = [], torch.zeros(n, *INPUT, dtype=torch.long)
    for i in range(n):
        masks = torch.zeros(2, *INPUT, dtype=torch.bool)
        masks[0, 8:30, 10 + 20 * i:40 + 20 * i] = True
        masks[1, 36:60, 50:90] = True
        images[i, :, masks[0]] = 230
        images[i, 0, masks[1]] = 200
        targets.append({"labels": torch.tensor([0, 2]), "masks": masks})
        ids[i][masks[0]], ids[i][masks[1]] = 1, 2
    return {"weak": images, "strong": images.clone(), "targets": targets, "instance_ids": ids}


def test_adaptation_steps_lower_the_loss(weights: Path) -> None:
    """Box loss, mask loss and L_pxl together, through the stage's step function; the supervised loss falls."""
    from sskd_deploy.training.contrastive import PixelContrast
    from sskd_deploy.training.grounded import make_teacher_step
    from sskd_deploy.training.objective import ObjectiveWeights

    torch.manual_seed(0)
    teacher = _teacher(weights, max_instances=6).train()
    contrast = PixelContrast(in_channels=teacher.feature_channels, hidden_dim=16, embed_dim=8, num_negatives=8,
                             max_anchors=32, patch_size=None)
    step = make_teacher_step(pxl=contrast, weights=ObjectiveWeights(lambda_pxl=0.1), total_steps=12)
    params = list(teacher.trainable_parameters()) + [p for p in contrast.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    batch, history = _batch(), []
    for i in range(12):
        terms = step(teacher, batch, i)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in terms.items()})
    assert {"loss", "sup", "sup_box", "sup_mask", "pxl", "margin", "false_negative_rate"} <= set(history[0])
    assert all(np.isfinite(h["loss"]) for h in history)
    first, last = history[0], np.mean([h["sup"] for h in history[-3:]])
    assert last < 0.7 * first["sup"], (first["sup"], last)
    assert np.mean([h["sup_mask"] for h in history[-3:]]) < first["sup_mask"]
    frozen = [p for name, ps in teacher.part_parameters().items() if name not in teacher.cfg.trainable for p in ps]
    assert all(p.grad is None for p in frozen)


def test_labeled_and_pseudo_halves_are_weighted_apart(weights: Path) -> None:
    from sskd_deploy.training.grounded import make_teacher_step
    from sskd_deploy.training.objective import ObjectiveWeights

    teacher = _teacher(weights, box_noise=0.0).eval()  # eval: no dropout, same numbers twice
    batch = _batch(1)
    pair = {"l": batch, "u": batch}
    with torch.no_grad():
        one = make_teacher_step(pxl=None, weights=ObjectiveWeights(lambda_semi=1.0, lambda_pxl=0.0),
                                total_steps=1)(teacher, pair, 0)
        two = make_teacher_step(pxl=None, weights=ObjectiveWeights(lambda_semi=2.5, lambda_pxl=0.0),
                                total_steps=1)(teacher, pair, 0)
    assert torch.allclose(one["sup"], one["semi"])
    assert torch.allclose(two["loss"], one["sup"] + 2.5 * one["semi"], rtol=1e-5)


def test_missing_weights_list_exactly_what_is_needed(weights: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(weights / "grounding_dino", partial / "grounding_dino")
    (partial / "grounding_dino" / "tokenizer.json").unlink()
    missing = missing_weight_files(partial)
    assert missing["grounding_dino"] == [f"{partial / 'grounding_dino' / 'tokenizer.json'} (or vocab.txt)"]
    assert missing["sam2"] == [str(partial / "sam2" / "config.json"),
                               f"{partial / 'sam2' / 'model.safetensors'} (or model.safetensors.index.json, "
                               "pytorch_model.bin)"]
    with pytest.raises(InputError) as err:
        load_grounded_sam2(partial, cfg=GroundedSam2Config(), class_names=CLASSES)
    text = str(err.value)
    for line in missing["grounding_dino"] + missing["sam2"]:
        assert line in text
    assert "config.json\n" not in text.split("sam2")[0] and "--allow-download" in text
    assert missing_weight_files(weights) == {"grounding_dino": [], "sam2": []}
    with pytest.raises(InputError, match="no Grounded-SAM2 weights directory"):
        load_grounded_sam2(None, cfg=GroundedSam2Config(), class_names=CLASSES)


def test_allow_download_uses_from_pretrained_for_the_missing_part(weights: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """Only the missing SAM2 comes from the Hub id, without local_files_only; no network is touched here."""
    partial = tmp_path / "partial"
    shutil.copytree(weights / "grounding_dino", partial / "grounding_dino")
    calls = []
    _, tiny_sam2, _ = tiny_models(0)

    def fake(cls, where, **kwargs):
        calls.append((cls.__name__, str(where), kwargs.get("local_files_only")))
        return tiny_sam2

    monkeypatch.setattr(transformers.Sam2Model, "from_pretrained", classmethod(fake))
    cfg = GroundedSam2Config(hub_sam2="someone/sam2-test")
    teacher = load_grounded_sam2(partial, cfg=cfg, class_names=CLASSES, allow_download=True)
    assert calls == [("Sam2Model", "someone/sam2-test", False)]
    assert teacher.sam2 is tiny_sam2
    # the CLI: no flag -> exit 2 with the list, nothing loaded
    assert main(["teacher", "zero-shot", "--weights", str(partial), "--data", str(tmp_path)]) == 2


def test_real_configurations_are_about_eleven_times_student_s() -> None:
    counts = count_large_parameters()
    assert 330e6 < counts["grounding_dino"] < 350e6  # Swin-L Grounding DINO (paper's ~341M)
    assert 210e6 < counts["sam2"] < 230e6  # SAM2.1 Hiera-L (published 224.4M)
    assert counts["total"] == counts["grounding_dino"] + counts["sam2"]


def test_model_info_prints_teacher_and_student_counts(tmp_path: Path, capsys) -> None:
    out = tmp_path / "info.json"
    assert main(["model", "info", "grounded-sam2", "--json", str(out)]) == 0
    info = json.loads(out.read_text())
    assert 10.0 < info["ratio"] < 11.5 and 50e6 < info["student"]["total"] < 54e6
    assert info["ratio"] == pytest.approx(info["teacher"]["total"] / info["student"]["total"], rel=1e-3)
    assert "teacher / student-s" in capsys.readouterr().out


def test_zero_shot_command_writes_an_evaluation(weights: Path, synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "zs"
    assert main(["teacher", "zero-shot", "--weights", str(weights), "--data", str(synth), "--out", str(out),
                 "--input-size", "64x96", "--box-threshold", "0.05", "--device", "cpu"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert {"ap", "ap50", "per_class", "num_images", "timing", "rule"} <= set(result)
    assert result["split"] == "val" and result["num_images"] == 3 and result["rule"]["class_threshold"] == 0.05
    assert result["timing"]["images"] == 3 and result["timing"]["ms_per_image"] > 0
    predictions = json.loads((out / "predictions.json").read_text())
    assert predictions and {"image_id", "category_id", "segmentation", "score"} <= set(predictions[0])


def test_label_command_writes_a_reusable_store(weights: Path, synth: Path, tmp_path: Path, capsys) -> None:
    args = ["teacher", "label", "--weights", str(weights), "--data", str(synth), "--out", str(tmp_path / "store"),
            "--input-size", "64x96", "--box-threshold", "0.05", "--classes", "disc,box,star"]
    assert main(args) == 0
    stores = list((tmp_path / "store").iterdir())
    assert len(stores) == 1 and (stores[0] / "pseudo_labels.json").is_file()
    data = json.loads((stores[0] / "pseudo_labels.json").read_text())
    assert [c["name"] for c in data["categories"]] == ["disc", "box", "star"]
    assert "built" in capsys.readouterr().out
    assert main(args) == 0
    assert "reused" in capsys.readouterr().out


def test_train_config_accepts_the_grounded_teacher() -> None:
    from sskd_deploy.config.train import TrainConfig

    config = TrainConfig.model_validate({"teacher": "grounded-sam2", "grounded_sam2": {"weights": "w",
                                                                                      "box_threshold": 0.25}})
    assert config.teacher == "grounded-sam2" and config.grounded_sam2.box_threshold == 0.25
    with pytest.raises(ValueError, match="unknown teacher 'sam3'"):
        TrainConfig.model_validate({"teacher": "sam3"})
    with pytest.raises(ValueError):
        TrainConfig.model_validate({"grounded_sam2": {"input_size": [100, 100]}})
