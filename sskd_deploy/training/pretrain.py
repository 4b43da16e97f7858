"""Pretraining the foundation stand-ins on the source world (``sskd-deploy pretrain``).

The paper starts from foundation models: a teacher that already segments the target classes by
name (Grounded-SAM2) and a student encoder pretrained at scale (DINOv2-S). No real weights can be
downloaded here, so the project pretrains its own on the synthetic **source** world (fourteen named
shapes, six of them the target's names, a cleaner rendering style than the target's) and ships them:

- ``teacher``: the teacher-tiny as a whole model with its named vocabulary (an sskd-deploy
  checkpoint whose IOSpec lists the fourteen class names); stage 1 slices its class head to the
  target's names (:mod:`sskd_deploy.models.vocabulary`), which is its zero-shot use.
- ``student``: the student-tiny trained whole on the same stream; its encoder is saved as a Hugging
  Face ``Dinov2Model`` directory (``encoder/config.json`` + ``encoder/model.safetensors``), the
  format of DINOv2-S, so ``train.student_weights`` reads it unchanged.

Training images are rendered on the fly from the source world's own seed streams (nothing is written
but a small labeled val split for the AP curve). Each part runs in the shared training loop, so it
resumes after an interruption and shows a progress bar with an ETA; a part whose ``complete.json``
exists is skipped. ``provenance.json`` records the command, seed, commit, steps, source-world
parameters, wall time and file hashes; :func:`ship` writes the FP16 copies the package carries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from sskd_deploy.config.model import ModelConfig, model_preset
from sskd_deploy.data.augment import WeakAugment
from sskd_deploy.data.layout import open_dataset_dir
from sskd_deploy.data.records import Dataset
from sskd_deploy.data.synth import GENERATOR_NAME, GENERATOR_VERSION, generate_synthetic, render_image
from sskd_deploy.data.synth_scene import SOURCE, SOURCE_CLASSES
from sskd_deploy.io import atomic_directory, atomic_write_json, dumps_json
from sskd_deploy.models.checkpoint import load_model, save_checkpoint
from sskd_deploy.models.criterion import LossWeights, SetCriterion
from sskd_deploy.models.deploy import DeployWrapper
from sskd_deploy.models.inference import evaluate_wrapper
from sskd_deploy.models.maskformer import build_model
from sskd_deploy.models.matcher import HungarianMatcher
from sskd_deploy.models.weights import save_encoder_as_dinov2
from sskd_deploy.provenance import environment, library_versions
from sskd_deploy.spec import IOSpec
from sskd_deploy.training.context import mark_complete, read_complete
from sskd_deploy.training.data import Sample, _chw, collate_samples, instance_id_map
from sskd_deploy.training.logging import plot_curves
from sskd_deploy.training.loop import LoopConfig, train_loop
from sskd_deploy.training.objective import ObjectiveWeights, make_step

PARTS = ("teacher", "student")
PART_PRESETS = {"teacher": "teacher-tiny", "student": "student-tiny"}
ENCODER_DIR = "encoder"  # the student's Dinov2Model directory inside its part folder
SHIPPED_TEACHER = "teacher-tiny.safetensors"
SHIPPED_ENCODER = "student-tiny-encoder"
SHIPPED_STUDENT = "student-tiny.safetensors"
SHIPPED = {"teacher": SHIPPED_TEACHER, "student": SHIPPED_STUDENT}  # each part's whole checkpoint when shipped
_SALT = {"teacher": 1, "student": 2}  # each part sees its own augmentation and data order


@dataclass(frozen=True)
class PretrainSettings:
    """One part's schedule. ``steps`` x ``batch_size`` fresh source images are drawn (no repeats)."""

    steps: int = 3000
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    image_size: tuple[int, int] = (192, 256)
    num_val: int = 100
    eval_every: int = 500
    checkpoint_every: int = 100
    warmup_steps: int = 100
    num_points: int = 4096
    init: str | None = None  # a completed pretraining folder to continue from (new images, new schedule)

    def __post_init__(self) -> None:
        problems = [f"{name} must be >= {low}, got {getattr(self, name)!r}" for name, low in
                    (("steps", 1), ("batch_size", 1), ("num_val", 1), ("eval_every", 0), ("checkpoint_every", 1),
                     ("warmup_steps", 0), ("num_points", 1), ("seed", 0)) if getattr(self, name) < low]
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr!r}")
        if len(self.image_size) != 2 or min(self.image_size) < 64 or any(s % 32 for s in self.image_size):
            problems.append(f"image_size must be (height, width), multiples of 32 and >= 64, got {self.image_size!r}")
        if problems:
            raise ValueError("pretrain: " + "; ".join(problems))


class SourceStream(TorchDataset):
    """``length`` source-world images rendered on demand, under the weak augmentation.

    Item ``i`` of epoch ``e`` is source image ``offset + e * length + i`` (so a second epoch, if any,
    and a continued pretraining see new images) with its augmentation drawn from ``(seed, e,
    offset + i)``: deterministic, as the loop's resume needs. Samples have the keys of :class:`~sskd_deploy.training.data.SegmentationSamples`
    without the strong view.
    """

    def __init__(self, *, seed: int, length: int, image_size: tuple[int, int], salt: int = 0, offset: int = 0) -> None:
        self.seed, self.length, self.image_size, self.salt = seed, length, tuple(image_size), salt
        self.offset = offset  # images an earlier pretraining already saw: this stream starts after them
        self.weak = WeakAugment(output_size=self.image_size, scale_range=(0.75, 1.25), hflip_prob=0.5)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        number = self.offset + self.epoch * self.length + index
        image, instances = render_image(self.seed * 16 + self.salt, 0, number, self.image_size, "source")
        rng = np.random.default_rng((self.seed, self.salt, self.epoch, self.offset + index))
        weak, masks, keep, valid = self.weak(image, instances.masks, rng)
        masks, labels = masks[keep], instances.labels[keep]
        return {"weak": _chw(weak), "labels": torch.from_numpy(labels.astype(np.int64)),
                "masks": torch.from_numpy(masks), "instance_ids": torch.from_numpy(instance_id_map(masks, valid)),
                "image_id": number}


def part_config(part: str, image_size: tuple[int, int]) -> ModelConfig:
    """The model a part trains: its tiny preset with the source vocabulary, at ``image_size``."""
    return model_preset(PART_PRESETS[part]).with_classes(len(SOURCE_CLASSES)).updated(input_size=tuple(image_size))


def source_world_parameters(settings: PretrainSettings) -> dict:
    """What defines the images a part saw: generator, world style, vocabulary, seed, size, count."""
    return {"generator": GENERATOR_NAME, "generator_version": GENERATOR_VERSION, "world": "source",
            "style": {k: v for k, v in dataclasses.asdict(SOURCE).items() if k not in ("name", "classes")},
            "classes": list(SOURCE_CLASSES), "seed": settings.seed, "image_size": list(settings.image_size),
            "val_images": settings.num_val}


def source_val(out: Path, settings: PretrainSettings) -> Dataset:
    """The labeled source-world val split (written once under ``out/source_val``)."""
    folder = out / "source_val"
    if not (folder / "dataset.json").is_file():
        generate_synthetic(folder, seed=settings.seed, num_train=1, num_val=settings.num_val, labeled_fraction=1.0,
                           image_size=settings.image_size, world="source", overwrite=folder.exists())
    return open_dataset_dir(folder)["val"]


def evaluate_on(model: torch.nn.Module, config: ModelConfig, val: Dataset, device: torch.device) -> dict[str, float]:
    """Mask AP (points) of ``model`` on the source val split, through the deploy wrapper."""
    wrapper = DeployWrapper(model=model, spec=IOSpec.from_model_config(config, SOURCE_CLASSES))
    result, _ = evaluate_wrapper(wrapper, val, batch_size=8, device=device)
    return {"val_ap": round(100 * result.ap, 2), "val_ap50": round(100 * result.ap50, 2)}


def pretrain_part(
    part: str, out: Path, settings: PretrainSettings, *, device: torch.device, console: Any = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Train one part (resuming when interrupted) and write its outputs; returns its record."""
    folder = out / part
    if (done := read_complete(folder)) is not None:
        log(f"{part}: complete, skipped (source val AP {done.get('val_ap')})")
        return done
    _check_settings(folder, settings)
    code = source_state()  # of the code that trains, before anything else can change it
    config = part_config(part, settings.image_size)
    val = source_val(out, settings)
    torch.manual_seed(settings.seed * 16 + _SALT[part])
    model = build_model(config)
    before = _continued_part(settings.init, part, config, model) if settings.init else None
    offset = before["images_seen"] if before else 0
    matcher = HungarianMatcher(num_points=settings.num_points, class_cost="ce")
    criterion = SetCriterion(num_classes=len(SOURCE_CLASSES), matcher=matcher, num_points=settings.num_points,
                             weights=LossWeights(semantic_weight=1.0, semantic_loss="pooled"))
    step_fn = make_step(criterion=criterion, pxl=None, weights=ObjectiveWeights(lambda_semi=0.0, lambda_pxl=0.0),
                        total_steps=settings.steps, generator_seed=settings.seed)
    loop = LoopConfig(steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr, backbone_lr_mult=1.0,
                      warmup_steps=min(settings.warmup_steps, settings.steps - 1),
                      checkpoint_every=settings.checkpoint_every, eval_every=settings.eval_every,
                      seed=settings.seed * 16 + _SALT[part])
    stream = SourceStream(seed=settings.seed, length=settings.steps * settings.batch_size,
                          image_size=settings.image_size, salt=_SALT[part], offset=offset)
    start = time.perf_counter()
    result = train_loop(out_dir=folder, model=model, step_fn=step_fn, dataset=stream, collate=collate_samples,
                        cfg=loop, param_groups=model.parameter_groups(decay_embeddings=False), console=console,
                        device=device, evaluate=lambda net: evaluate_on(net, config, val, device))
    seconds = time.perf_counter() - start
    spec = IOSpec.from_model_config(config, SOURCE_CLASSES)
    chain = _chain_totals(before, result.steps * settings.batch_size, result.steps, result.seconds)
    extra = {"pretrained_on": "source world", "part": part, "steps": result.steps, **chain}
    save_checkpoint(folder / "model.safetensors", model=model, config=config, spec=spec, extra=extra)
    if part == "student":
        save_encoder_as_dinov2(model.encoder, folder / ENCODER_DIR)
    scores = evaluate_on(model.eval(), config, val, device)
    record = {"part": part, "preset": PART_PRESETS[part], "steps": result.steps, "batch_size": settings.batch_size,
              "lr": settings.lr, "resumed_from": result.resumed_from, "final_losses": result.final_losses,
              "train_seconds": round(result.seconds, 1), "wall_seconds_this_run": round(seconds, 1), "device": str(device),
              "threads": torch.get_num_threads(), "settings": _settings_json(settings), "code": code,
              "source_world": source_world_parameters(settings), **chain, **scores}
    if before is not None:
        record["continued_from"] = before
    if (folder / "metrics.jsonl").is_file():
        plot_curves(folder / "metrics.jsonl", folder / "curves.png")
    mark_complete(folder, record)
    log(f"{part}: source val mask AP {scores['val_ap']:.1f}, AP50 {scores['val_ap50']:.1f} ({seconds:.0f} s)")
    return record


def pretrain(
    out: Path, settings: PretrainSettings, *, parts: tuple[str, ...] = PARTS, device: torch.device,
    console: Any = None, log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Pretrain ``parts`` into ``out`` and (re)write ``out/provenance.json``; returns the provenance."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"pretrain: unknown part(s) {unknown}; choose from {list(PARTS)}")
    out.mkdir(parents=True, exist_ok=True)
    for part in parts:
        pretrain_part(part, out, settings, device=device, console=console, log=log)
    return write_provenance(out)


def _continued_part(init: str, part: str, config: ModelConfig, model: torch.nn.Module) -> dict:
    """Load ``init/<part>/model.safetensors`` into ``model``; returns what that pretraining had done.

    The earlier pretraining must be complete and of the same model; its images are not seen again
    (the new stream starts after them) and its steps and time add up in the new record.
    """
    folder = Path(init) / part
    done = read_complete(folder)
    if done is not None:
        path = folder / "model.safetensors"
        provenance = Path(init) / "provenance.json"
        commands = json.loads(provenance.read_text()).get("commands", []) if provenance.is_file() else []
    elif (shipped := _shipped_record(Path(init), part)) is not None:
        path, done, commands = shipped
    else:
        raise ValueError(f"{folder}: --init needs a completed pretraining of part {part!r} (no complete.json), "
                         f"or a shipped folder whose provenance.json has part {part!r}")
    previous, _ = load_model(path, expect=config)
    model.load_state_dict({k: v.float() for k, v in previous.state_dict().items()})
    return {"path": str(path.resolve()), "commands": commands, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "images_seen": done.get("images_seen", done["steps"] * done["batch_size"]),
            "total_steps": done.get("total_steps", done["steps"]),
            "total_train_seconds": done.get("total_train_seconds", done["train_seconds"]),
            "val_ap": done.get("val_ap"), "val_ap50": done.get("val_ap50")}


def _shipped_record(folder: Path, part: str) -> tuple[Path, dict, list[str]] | None:
    """``(checkpoint, record, commands)`` of ``part`` in a shipped folder (what ``ship`` wrote), else None.

    Continuing the shipped stand-ins starts from their FP16 weights, cast back to float32.
    """
    provenance = folder / "provenance.json"
    path = folder / SHIPPED[part]
    if not (path.is_file() and provenance.is_file()):
        return None
    data = json.loads(provenance.read_text())
    record = data.get("parts", {}).get(part)
    return None if record is None else (path, record, _all_commands(data))


def _chain_totals(before: dict | None, images: int, steps: int, seconds: float) -> dict:
    """Images, steps and training time summed over this pretraining and the ones it continued."""
    before = before or {"images_seen": 0, "total_steps": 0, "total_train_seconds": 0.0}
    return {"images_seen": before["images_seen"] + images, "total_steps": before["total_steps"] + steps,
            "total_train_seconds": round(before["total_train_seconds"] + seconds, 1)}


def _settings_json(settings: PretrainSettings) -> dict:
    return json.loads(dumps_json(dataclasses.asdict(settings)))


def _check_settings(folder: Path, settings: PretrainSettings) -> None:
    """Refuse to resume a part started with other settings (its saved state would not match)."""
    path = folder / "settings.json"
    wanted = _settings_json(settings)
    folder.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != wanted:
            changed = [f"{k}: {saved.get(k)!r} -> {wanted.get(k)!r}" for k in wanted if saved.get(k) != wanted.get(k)]
            raise ValueError(f"{folder}: started with other settings ({'; '.join(changed)}); "
                             "use another --out or the same settings")
    else:
        atomic_write_json(path, wanted, indent=2)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, text=True,
                              capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source_state() -> dict:
    """``{"commit", "dirty"}`` of the git checkout this package runs from (None outside one)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit or None, "dirty": None if status is None else bool(status)}


def file_hashes(root: Path, names: list[str]) -> dict[str, str]:
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in names if (root / name).is_file()}


def write_provenance(out: Path) -> dict:
    """``out/provenance.json``: commands, commit, machine, each completed part's record (settings,
    source-world parameters, steps, wall time, AP on source val, file hashes)."""
    parts = {}
    for part in PARTS:
        record = read_complete(out / part)
        if record is None:
            continue
        files = ["model.safetensors"] + ([f"{ENCODER_DIR}/model.safetensors", f"{ENCODER_DIR}/config.json"]
                                         if part == "student" else [])
        parts[part] = {**record, "sha256": file_hashes(out / part, files)}
    previous = json.loads((out / "provenance.json").read_text()) if (out / "provenance.json").is_file() else {}
    commands = previous.get("commands", [])
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    if not commands or commands[-1] != command:
        commands.append(command)
    data = {"format": "sskd-deploy/pretrain", "version": 1, "commands": commands, "parts": parts,
            "environment": environment(), "libraries": library_versions()}
    atomic_write_json(out / "provenance.json", data, indent=2)
    return data


def ship(out: Path, dest: Path) -> dict:
    """Write the shipped form of a completed pretraining into ``dest`` (replaced atomically).

    FP16 copies of the teacher checkpoint (``teacher-tiny.safetensors``), of the student encoder
    directory (``student-tiny-encoder/``) and of the whole student (``student-tiny.safetensors``),
    the provenance, a README generated from it, and ``SHA256SUMS`` over every file.
    """
    missing = [part for part in PARTS if read_complete(out / part) is None]
    kept = {part: _shipped_record(dest, part) for part in missing}
    if not_kept := [part for part, found in kept.items() if found is None]:
        raise ValueError(f"{out}: pretraining of {not_kept} is not complete (and {dest} ships no such part to keep); "
                         "run `sskd-deploy pretrain` first")
    provenance = json.loads((out / "provenance.json").read_text())
    if kept:  # a part pretrained elsewhere keeps its shipped files and record
        previous = json.loads((dest / "provenance.json").read_text())
        provenance["parts"] = {p: provenance["parts"].get(p) or previous["parts"][p] for p in PARTS}
        provenance["commands"] = list(dict.fromkeys([*_all_commands(previous), *provenance.get("commands", [])]))
        provenance["kept_from_previous_ship"] = sorted(kept)
    with atomic_directory(dest, overwrite=True) as tmp:
        for part in kept:
            shutil.copyfile(dest / SHIPPED[part], tmp / SHIPPED[part])
            if part == "student":
                shutil.copytree(dest / SHIPPED_ENCODER, tmp / SHIPPED_ENCODER)
        for part, name in SHIPPED.items():
            if part in kept:
                continue
            model, checkpoint = load_model(out / part / "model.safetensors")
            if part == "student":
                save_encoder_as_dinov2(model.encoder, tmp / SHIPPED_ENCODER, dtype=torch.float16)
            save_checkpoint(tmp / name, model=model.half(), config=checkpoint.model_config,
                            spec=checkpoint.spec, extra={**checkpoint.extra, "storage": "float16"})
        atomic_write_json(tmp / "provenance.json", provenance, indent=2)
        (tmp / "README.md").write_text(shipped_readme(provenance))
        names = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        sums = "".join(f"{hashlib.sha256((tmp / n).read_bytes()).hexdigest()}  {n}\n" for n in names)
        (tmp / "SHA256SUMS").write_text(sums)
    return provenance


def shipped_readme(provenance: dict) -> str:
    """The shipped folder's README: what the files are and exactly how they were made (from provenance)."""
    parts = provenance["parts"]
    world = next(iter(parts.values()))["source_world"]
    lines = [
        "# Shipped weights: the foundation stand-ins",
        "",
        "Pretrained by this project on its synthetic **source** world (no third-party weights, no downloads),",
        "stored in FP16. This file is generated by `sskd-deploy pretrain --ship`; `SHA256SUMS` lists every",
        "file's hash and a test checks them.",
        "",
        "| file | keyword | what | preset | steps x batch (source images) | lr | device (threads) | train time "
        "| source-val mask AP / AP50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    files = {"teacher": [(SHIPPED_TEACHER, "shipped", "whole model, named vocabulary (sskd-deploy checkpoint)")],
             "student": [(SHIPPED_ENCODER + "/", "shipped", "encoder only, Hugging Face Dinov2Model directory"),
                         (SHIPPED_STUDENT, "shipped-whole", "whole model, named vocabulary (sskd-deploy checkpoint)")]}
    for part in PARTS:
        if part not in parts:
            continue
        r = parts[part]
        for name, keyword, what in files[part]:
            lines.append(f"| `{name}` | `{keyword}` | {what} | {r['preset']} | {_schedule(r)} | {r['lr']:g} | "
                         f"{r['device']} ({r['threads']}) | {r.get('total_train_seconds', r['train_seconds']) / 60:.0f} "
                         f"min | {r['val_ap']:.1f} / {r['val_ap50']:.1f} |")
    commits = sorted({str((r.get("code") or {}).get("commit")) for r in parts.values()})
    lines += [
        "",
        f"Source world: {len(world['classes'])} classes ({', '.join(world['classes'])}), images "
        f"{world['image_size'][0]}x{world['image_size'][1]}, seed {world['seed']}, generator "
        f"{world['generator']} v{world['generator_version']}, rendered on the fly (each training image new); "
        f"source-val AP is on {world['val_images']} held-out source images.",
        f"Code: commit(s) {', '.join(commits)}. Commands:",
        "",
        *[f"    {command}" for command in _all_commands(provenance)],
        "",
        "A config names them by keyword (`train.teacher_weights: shipped`, `train.student_weights: shipped` or",
        "`shipped-whole`); a whole model's class head is sliced to the run's class names (zero-shot by name).",
        "Full record: `provenance.json`.",
        "",
    ]
    return "\n".join(lines)


def _all_commands(provenance: dict) -> list[str]:
    """The commands of the pretrainings this one continued (earliest first), then its own."""
    earlier = [c for r in provenance["parts"].values() for c in (r.get("continued_from") or {}).get("commands", [])]
    return list(dict.fromkeys([*earlier, *provenance.get("commands", [])]))


def _schedule(record: dict) -> str:
    """``steps x batch (images)``, with the earlier pretraining a continued one started from."""
    images = record.get("images_seen", record["steps"] * record["batch_size"])
    here = f"{record['steps']} x {record['batch_size']}"
    before = record.get("continued_from")
    if before is None:
        return f"{here} ({images})"
    return f"{before['total_steps']} steps, then {here} ({images} in all)"
