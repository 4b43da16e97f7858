"""The foundation stand-ins: the source world, ``sskd-deploy pretrain`` (resumable, provenance,
shipped form), zero-shot use by class name, and the weights the package ships."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sskd_deploy.data.synth import SOURCE_CLASSES, SYNTH_CLASSES, generate_synthetic, render_image
from sskd_deploy.errors import InputError
from sskd_deploy.config.model import model_preset
from sskd_deploy.models.checkpoint import load_model, read_checkpoint, save_checkpoint
from sskd_deploy.models.maskformer import build_model
from sskd_deploy.models.vocabulary import is_model_checkpoint, restrict_to_names
from sskd_deploy.spec import IOSpec
from sskd_deploy.config.train import TrainConfig
from sskd_deploy.training.pretrain import PretrainSettings, SourceStream, pretrain, ship
from sskd_deploy.weights import CHECKSUMS, FOLDER, FILES, shipped_path


def _busyness(world: str, count: int = 12) -> float:
    """Mean absolute difference between neighbouring pixels: texture, clutter and sensor noise."""
    total = 0.0
    for i in range(count):
        image = render_image(3, 0, i, (96, 128), world)[0].astype(np.float32)
        total += float(np.abs(np.diff(image, axis=1)).mean() + np.abs(np.diff(image, axis=0)).mean())
    return total / count


def test_source_world_has_its_own_vocabulary_style_and_streams() -> None:
    assert len(SOURCE_CLASSES) >= 12 and set(SYNTH_CLASSES) <= set(SOURCE_CLASSES)
    assert len(set(SOURCE_CLASSES)) == len(SOURCE_CLASSES)
    assert list(SOURCE_CLASSES[: len(SYNTH_CLASSES)]) != list(SYNTH_CLASSES)  # names must be mapped, not indices
    a, inst = render_image(3, 0, 5, (96, 128), "source")
    b, _ = render_image(3, 0, 5, (96, 128), "source")
    target, _ = render_image(3, 0, 5, (96, 128), "target")
    assert np.array_equal(a, b) and not np.array_equal(a, target)
    assert inst.labels.max(initial=0) < len(SOURCE_CLASSES)
    labels = np.concatenate([render_image(3, 0, i, (96, 128), "source")[1].labels for i in range(40)])
    assert len(set(labels.tolist())) >= 10  # the extra names are really drawn
    assert _busyness("source") < 0.7 * _busyness("target")  # the cleaner studio style
    with pytest.raises(ValueError, match="unknown synthetic world"):
        render_image(3, 0, 0, (96, 128), "moon")


def test_source_dataset_on_disk_names_its_world(tmp_path: Path) -> None:
    manifest = generate_synthetic(tmp_path / "src", seed=1, num_train=2, num_val=2, image_size=(64, 96),
                                  world="source")
    assert manifest["classes"] == list(SOURCE_CLASSES) and manifest["generator"]["world"] == "source"
    val = json.loads((tmp_path / "src" / "annotations" / "val.json").read_text())
    assert [c["name"] for c in val["categories"]] == list(SOURCE_CLASSES)
    target = generate_synthetic(tmp_path / "tgt", seed=1, num_train=2, num_val=2, image_size=(64, 96))
    assert "world" not in target["generator"] and target["classes"] == list(SYNTH_CLASSES)


def test_source_stream_is_deterministic_and_new_each_epoch() -> None:
    stream = SourceStream(seed=0, length=4, image_size=(64, 96), salt=1)
    first = stream[2]
    assert torch.equal(first["weak"], stream[2]["weak"]) and first["weak"].shape == (3, 64, 96)
    assert first["masks"].shape[0] == first["labels"].shape[0]
    stream.set_epoch(1)
    assert not torch.equal(first["weak"], stream[2]["weak"]) and stream[2]["image_id"] == 6
    # a continued pretraining starts after the images the earlier one saw
    later = SourceStream(seed=0, length=4, image_size=(64, 96), salt=1, offset=8)
    assert later[0]["image_id"] == 8 and not torch.equal(later[0]["weak"], first["weak"])


def _vocabulary_teacher(tmp_path: Path) -> Path:
    config = model_preset("teacher-tiny").with_classes(len(SOURCE_CLASSES)).updated(input_size=(64, 96))
    torch.manual_seed(0)
    model = build_model(config)
    path = tmp_path / "vocab.safetensors"
    save_checkpoint(path, model=model, config=config, spec=IOSpec.from_model_config(config, SOURCE_CLASSES))
    return path


def test_class_head_sliced_by_name_predicts_as_the_vocabulary_model(tmp_path: Path) -> None:
    path = _vocabulary_teacher(tmp_path)
    assert is_model_checkpoint(path) and not is_model_checkpoint(tmp_path)
    full, checkpoint = load_model(path)
    names = ("ring", "disc", "cross")
    config, state = restrict_to_names(checkpoint, names, path)
    sliced = build_model(config).eval()
    sliced.load_state_dict(state)
    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        a, b = full(full.normalize(image)), sliced(sliced.normalize(image))
    rows = [SOURCE_CLASSES.index(n) for n in names] + [len(SOURCE_CLASSES)]
    assert torch.allclose(b["pred_logits"], a["pred_logits"][..., rows], atol=1e-5)
    assert torch.allclose(b["pred_masks"], a["pred_masks"], atol=1e-5)
    # a student learns its classes anyway: a new name takes its rows from a freshly initialised model
    fresh = build_model(checkpoint.model_config.with_classes(2)).state_dict()
    _, state = restrict_to_names(checkpoint, ("ring", "bolt"), path, fresh=fresh)
    head = "transformer_decoder.class_embed.weight"
    assert torch.equal(state[head][0], checkpoint.state_dict[head][SOURCE_CLASSES.index("ring")])
    assert torch.equal(state[head][1], fresh[head][1]) and torch.equal(state[head][2], checkpoint.state_dict[head][-1])
    with pytest.raises(InputError, match="not in this teacher's vocabulary") as err:
        restrict_to_names(checkpoint, ("ring", "bolt"), path)
    assert "hexagon" in str(err.value) and "'bolt'" in str(err.value)
    with pytest.raises(InputError, match="more than once"):
        restrict_to_names(checkpoint, ("ring", "ring"), path)


def test_pretrain_writes_resumable_parts_provenance_and_the_shipped_form(tmp_path: Path) -> None:
    settings = PretrainSettings(steps=2, batch_size=1, image_size=(64, 96), num_val=2, eval_every=0,
                                checkpoint_every=1, num_points=64)
    out = tmp_path / "pretrain"
    data = pretrain(out, settings, device=torch.device("cpu"))
    assert set(data["parts"]) == {"teacher", "student"}
    for part, record in data["parts"].items():
        assert record["steps"] == 2 and 0 <= record["val_ap"] <= 100 and record["settings"]["steps"] == 2
        assert record["source_world"]["classes"] == list(SOURCE_CLASSES)
        for name, digest in record["sha256"].items():
            assert hashlib.sha256((out / part / name).read_bytes()).hexdigest() == digest
    assert "commands" in data and "environment" in data
    # a finished part is skipped; a part started with other settings is refused, not silently mixed
    stamp = (out / "student" / "model.safetensors").stat().st_mtime_ns
    pretrain(out, settings, parts=("student",), device=torch.device("cpu"))
    assert (out / "student" / "model.safetensors").stat().st_mtime_ns == stamp
    (out / "student" / "complete.json").unlink()
    with pytest.raises(ValueError, match="other settings"):
        pretrain(out, PretrainSettings(steps=3, batch_size=1, image_size=(64, 96), num_val=2), parts=("student",),
                 device=torch.device("cpu"))
    pretrain(out, settings, parts=("student",), device=torch.device("cpu"))  # resumes from its state
    # --init: continue from the finished weights on new images; steps, images and time add up
    more = tmp_path / "more"
    with pytest.raises(ValueError, match="no complete.json"):
        pretrain(more, dataclasses.replace(settings, init=str(tmp_path / "absent")), parts=("student",),
                 device=torch.device("cpu"))
    again = pretrain(tmp_path / "more2", dataclasses.replace(settings, init=str(out)), device=torch.device("cpu"))
    for part, record in again["parts"].items():
        before = record["continued_from"]
        assert before["sha256"] == hashlib.sha256((out / part / "model.safetensors").read_bytes()).hexdigest()
        assert before["commands"] and before["path"] == str((out / part / "model.safetensors").resolve())
        assert (record["images_seen"], record["total_steps"]) == (4, 4)
        assert record["total_train_seconds"] >= before["total_train_seconds"]
    dest = tmp_path / "shipped"
    ship(tmp_path / "more2", dest)
    assert "2 steps, then 2 x 1 (4 in all)" in (dest / "README.md").read_text()
    for line in (dest / CHECKSUMS).read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == digest
    teacher = read_checkpoint(dest / "teacher-tiny.safetensors")
    assert teacher.state_dict["transformer_decoder.class_embed.weight"].dtype == torch.float16
    assert tuple(teacher.spec.class_names) == SOURCE_CLASSES
    student = build_model(model_preset("student-tiny").with_classes(6).updated(
        input_size=(64, 96), encoder={"weights": str(dest / "student-tiny-encoder")}))
    assert student.encoder.weights_report["format"] == "huggingface"
    whole = read_checkpoint(dest / "student-tiny.safetensors")
    assert tuple(whole.spec.class_names) == SOURCE_CLASSES
    assert torch.equal(whole.state_dict["encoder.backbone.embeddings.cls_token"].float(),
                       student.encoder.backbone.embeddings.cls_token.float())
    # continue one shipped part (--init shipped) and ship it again: the other part is kept as it was
    kept = {name: (dest / name).read_bytes() for name in ("student-tiny.safetensors",
                                                          "student-tiny-encoder/model.safetensors")}
    third = pretrain(tmp_path / "more3", dataclasses.replace(settings, init=str(dest)), parts=("teacher",),
                     device=torch.device("cpu"))
    before = third["parts"]["teacher"]["continued_from"]
    assert before["path"] == str((dest / "teacher-tiny.safetensors").resolve())
    assert (third["parts"]["teacher"]["total_steps"], before["total_steps"]) == (6, 4)
    with pytest.raises(ValueError, match=r"\['student'\] is not complete"):
        ship(tmp_path / "more3", tmp_path / "fresh")
    old_teacher = (dest / "teacher-tiny.safetensors").read_bytes()
    shipped = ship(tmp_path / "more3", dest)
    assert shipped["kept_from_previous_ship"] == ["student"]
    assert {name: (dest / name).read_bytes() for name in kept} == kept
    assert (dest / "teacher-tiny.safetensors").read_bytes() != old_teacher
    assert "4 steps, then 2 x 1 (6 in all)" in (dest / "README.md").read_text()
    for line in (dest / CHECKSUMS).read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == digest


def test_shipped_weights_match_their_checksums_and_load() -> None:
    listed = {}
    for line in (FOLDER / CHECKSUMS).read_text().splitlines():
        digest, name = line.split("  ")
        listed[name] = digest
        assert hashlib.sha256((FOLDER / name).read_bytes()).hexdigest() == digest, name
    assert {"teacher-tiny.safetensors", "student-tiny.safetensors", "student-tiny-encoder/model.safetensors",
            "student-tiny-encoder/config.json", "provenance.json"} <= set(listed)
    assert sum((FOLDER / name).stat().st_size for name in listed) <= 40 * 2**20
    teacher = read_checkpoint(shipped_path("teacher", "teacher-tiny"))
    assert set(SYNTH_CLASSES) <= set(teacher.spec.class_names)
    for whole in (teacher, read_checkpoint(shipped_path("student", "student-tiny", "shipped-whole"))):
        config, state = restrict_to_names(whole, SYNTH_CLASSES, FOLDER)
        build_model(config).load_state_dict(state)
    student = build_model(model_preset("student-tiny").with_classes(6).updated(
        encoder={"weights": str(shipped_path("student", "student-tiny"))}))
    assert student.encoder.weights_report["interpolated"] == {}
    provenance = json.loads((FOLDER / "provenance.json").read_text())
    assert set(provenance["parts"]) == {"teacher", "student"}
    assert all(part["steps"] >= 1 for part in provenance["parts"].values())
    assert set(FILES.values()) <= {name.split("/")[0] for name in listed}


def test_shipped_is_the_default_and_only_for_the_tiny_presets() -> None:
    train = TrainConfig()
    assert train.weights_path("teacher") == shipped_path("teacher", "teacher-tiny")
    assert train.weights_path("student") == shipped_path("student", "student-tiny", "shipped-whole")
    encoder = TrainConfig(student_weights="shipped").weights_path("student")
    assert encoder == shipped_path("student", "student-tiny") and encoder.is_dir()
    assert TrainConfig(student_weights=None).weights_path("student") is None
    with pytest.raises(ValueError, match="shipped-whole: no such shipped weights for 'student-s'"):
        TrainConfig(student="student-s")
    with pytest.raises(ValueError, match="shipped-whole: no such shipped weights for 'teacher-tiny' as teacher"):
        TrainConfig(teacher_weights="shipped-whole")
    TrainConfig(student="student-s", student_weights=None)
    TrainConfig(teacher="grounded-sam2")  # its weights come from train.grounded_sam2


def test_pretrain_init_keyword_names_the_package_stand_ins(tmp_path: Path) -> None:
    from sskd_deploy.cli import _pretrain_init

    assert _pretrain_init(None) is None
    assert _pretrain_init(Path("shipped")) == str(FOLDER)
    assert _pretrain_init(tmp_path / "run") == str((tmp_path / "run").resolve())
