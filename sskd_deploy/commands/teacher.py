"""``sskd-deploy teacher ...``: the Grounded-SAM2 foundation-model teacher on its own.

``zero-shot`` measures the pretrained (or an adapted) teacher's mask AP on a labeled split, the
paper's "zero-shot VFM" row; ``label`` writes its pseudo-labels into the same store the training
pipeline builds and reuses. Both load the weights from a local directory and download nothing
unless ``--allow-download`` is given.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from sskd_deploy.config.teacher import GroundedSam2Config
from sskd_deploy.data.records import CategorySet, Dataset
from sskd_deploy.errors import DatasetError, SSKDError
from sskd_deploy.io import atomic_write_json


def _open_split(path: Path, split: str | None, *, prefer: str, console: Console) -> Dataset:
    from sskd_deploy.data.layout import open_dataset_dir, pick_split

    splits = open_dataset_dir(Path(path), log=lambda line: console.print(line, markup=False, soft_wrap=True))
    if split is None and prefer in splits and len(splits) > 1:
        split = prefer
    return pick_split(splits, split, Path(path))


def _teacher(cfg: GroundedSam2Config, class_names, *, device: str):
    from sskd_deploy.models.grounded_sam2 import load_grounded_sam2
    from sskd_deploy.training.context import pick_device

    torch_device = pick_device(device)
    teacher = load_grounded_sam2(cfg.weights, cfg=cfg, class_names=class_names).to(torch_device).eval()
    return teacher, torch_device


def zero_shot_command(
    *, data: Path, split: str | None, cfg: GroundedSam2Config, out: Path, device: str, console: Console,
) -> dict[str, Any]:
    """Label a labeled split with the teacher (weights and input size from ``cfg``), write ``eval.json`` +
    ``predictions.json`` into ``out``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sskd_deploy.evaluation import format_eval_table
    from sskd_deploy.evaluation.postprocess import instances_to_coco_results
    from sskd_deploy.training.grounded import evaluate_teacher

    dataset = _open_split(data, split, prefer="val", console=console)
    if not any(r.labeled for r in dataset.records):
        raise DatasetError(dataset.source, "zero-shot evaluation needs a labeled split (this one has no labels)")
    start = time.perf_counter()
    teacher, torch_device = _teacher(cfg, dataset.categories.names, device=device)
    load_seconds = time.perf_counter() - start
    size = tuple(cfg.input_size)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("zero-shot labeling", total=len(dataset.records))
        result, predictions, seconds = evaluate_teacher(
            teacher, dataset, input_size=size, device=torch_device,
            progress=lambda done, total: bar.update(task, completed=done))
    images = len(predictions)
    console.print(format_eval_table(result, title=f"zero-shot Grounded-SAM2 on {dataset.name} ({images} images)"))
    results = [entry for image_id, inst in predictions.items()
               for entry in instances_to_coco_results(inst, image_id, dataset.categories)]
    timing = {"images": images, "labeling_seconds": round(seconds, 3),
              "ms_per_image": round(1000 * seconds / max(images, 1), 2), "load_seconds": round(load_seconds, 3),
              "input_size": list(size), "device": str(torch_device), "prompt": teacher.prompt,
              "parameters": teacher.parameter_counts()["total"]}
    out = Path(out)
    atomic_write_json(out / "predictions.json", results)
    summary = {**result.to_dict(), "teacher": "grounded-sam2", "weights": str(cfg.weights), "data": str(data),
               "split": dataset.name, "rule": teacher.labeling_rule(), "timing": timing}
    atomic_write_json(out / "eval.json", summary, indent=2)
    console.print(f"{images} images in {seconds:.2f} s ({timing['ms_per_image']:.1f} ms/image, {torch_device}); "
                  f"wrote {out / 'eval.json'}")
    return summary


def label_command(
    *, data: Path, split: str | None, classes: list[str] | None, cfg: GroundedSam2Config, out: Path, device: str,
    console: Console,
) -> dict[str, Any]:
    """Pseudo-label a split (labels, if any, are ignored) into ``out/<key>/``, or reuse that store."""
    from dataclasses import replace

    from sskd_deploy.training.grounded import labeling_config, teacher_identity
    from sskd_deploy.training.pseudo_labels import build_pseudo_labels

    dataset = _open_split(data, split, prefer="train", console=console)
    names = tuple(classes) if classes else tuple(dataset.categories.names)
    if not names:
        raise SSKDError(f"{data}: the images have no classes of their own; name them with --classes a,b,c")
    categories = CategorySet(names, tuple(range(1, len(names) + 1))) if classes else dataset.categories
    unlabeled = replace(dataset, categories=categories,
                        records=tuple(replace(r, annotations=None) for r in dataset.records))
    teacher, torch_device = _teacher(cfg, names, device=device)
    store = build_pseudo_labels(
        teacher, unlabeled, out_root=Path(out), teacher_hash=teacher_identity(teacher),
        input_size=tuple(cfg.input_size), cfg=labeling_config(teacher), device=torch_device,
        console=console,
    )
    images = store.stats.get("images", 0)
    state = "reused" if store.reused else "built"
    console.print(f"pseudo-labels {state}: {store.path} ({store.stats.get('instances', 0)} instances on {images} "
                  f"images, prompt {teacher.prompt!r})")
    return {"path": str(store.path), "key": store.key, "reused": store.reused, "stats": store.stats}
