"""Mask overlays of the val images the deployed model does best and worst on.

A mean AP hides where a model fails; the extremes show it. The model is the one that ships (the
exported FP32 graph through ONNX Runtime), or the latest student checkpoint when nothing was
exported yet. Each val image is scored by its own mask AP (pycocotools on that image alone), and
the best and worst are drawn ground truth beside prediction. Nothing is cached: on the demo run
the whole pass takes a few seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sskd_deploy.config.layout import CHECKPOINT, CONFIG
from sskd_deploy.errors import SSKDError
from sskd_deploy.report.html import Markup, Section, figure, fmt, missing, note, para, section, tag
from sskd_deploy.report.runfiles import RunFiles

STUDENT_STAGES = ("student_3", "student_2")  # the latest student first
DRAW_THRESHOLD = 0.5  # predictions below it are not drawn (they still count for AP)
TITLE = "Best and worst val images"


@dataclass(frozen=True)
class ImageScore:
    """The mask AP of one val image (``index`` into the dataset's records), fractions."""

    index: int
    ap: float
    ap50: float | None


def score_images(dataset: Any, predictions: dict[int, Any]) -> list[ImageScore]:
    """Per-image mask AP; images without ground truth are left out (AP is undefined there)."""
    from sskd_deploy.evaluation import evaluate_instances

    scores = []
    for i, record in enumerate(dataset.records):
        if not record.annotations:
            continue
        result = evaluate_instances(dataset.subset([i]), {record.image_id: predictions[record.image_id]})
        if result.ap is not None:
            scores.append(ImageScore(i, result.ap, result.ap50))
    return scores


def best_and_worst(scores: Sequence[ImageScore], num: int) -> tuple[list[ImageScore], list[ImageScore]]:
    """The ``num`` highest-AP images and the ``num`` lowest among the rest (no image in both)."""
    ranked = sorted(scores, key=lambda s: (-s.ap, -(s.ap50 or 0.0), s.index))
    return ranked[:num], ranked[num:][::-1][:num]


def _open_runner(run: RunFiles) -> tuple[Any, str] | None:
    """The exported FP32 graph, else the latest student checkpoint; None when the run has neither."""
    graph = run.layout.export_fp32_graph
    if run.exists(graph):
        from sskd_deploy.runtime.onnxruntime_runner import OrtRunner

        return (OrtRunner(graph, providers=["CPUExecutionProvider"]),
                f"{run.layout.shown(graph)} (ONNX Runtime)")
    for stage in STUDENT_STAGES:
        checkpoint = run.layout.stage_file(stage, CHECKPOINT)
        if run.exists(checkpoint):
            from sskd_deploy.runtime.torch_runner import TorchRunner

            return TorchRunner.from_checkpoint(checkpoint), f"{run.layout.shown(checkpoint)} (PyTorch)"
    return None


def _val_split(config: Any) -> Any:
    """The run's val split; a synthetic world that is not on disk is not regenerated for a report."""
    from pathlib import Path

    from sskd_deploy.data.sources import resolve_data

    root = Path(config.data.root)
    if config.data.labeled is None and not (root / "dataset.json").is_file():
        raise SSKDError(f"{root}: the run's synthetic dataset is not there (run `sskd-deploy run`)")
    return resolve_data(config.data).val


def _pair_png(record: Any, prediction: Any, class_names: Sequence[str]) -> bytes:
    """Ground truth and prediction (score > 0.5) of one image, side by side, as PNG bytes."""
    from sskd_deploy.data.image_io import encode_png, read_image
    from sskd_deploy.data.visualize import enlarge, overlay_instances, tile_images

    image = read_image(record.path)
    shown = prediction.subset(prediction.scores > DRAW_THRESHOLD)
    tiles = [overlay_instances(*enlarge(image, inst, min_width=384), class_names, show_scores=scores)
             for inst, scores in ((record.instances(), False), (shown, True))]
    return encode_png(tile_images(tiles, columns=2))


def _gallery(title: str, picked: list[ImageScore], dataset: Any, predictions: dict[int, Any]) -> Markup:
    if not picked:
        return tag("h3", title) + note("no scored images left to show")
    figures = []
    for score in picked:
        record = dataset.records[score.index]
        pred = predictions[record.image_id]
        caption = (f"{record.file_name}: AP {fmt(score.ap, 1, scale=100)}, AP50 {fmt(score.ap50, 1, scale=100)}; "
                   f"left ground truth ({len(record.annotations or ())}), right prediction with score > "
                   f"{DRAW_THRESHOLD} ({int((pred.scores > DRAW_THRESHOLD).sum())} of {len(pred)})")
        figures.append(figure(_pair_png(record, pred, dataset.categories.names), caption=caption))
    return tag("h3", title) + Markup(f'<div class="gallery">{"".join(figures)}</div>')


def _overlay_parts(run: RunFiles, config: Any, num: int, log: Callable[[str], None]) -> list[object]:
    opened = _open_runner(run)
    if opened is None:
        return [missing(run.layout.shown(run.layout.export_fp32_graph), "export")]
    runner, described = opened
    try:
        val = _val_split(config)
        if tuple(runner.spec.class_names) != tuple(val.categories.names):
            return [note(f"not available: the model's classes {runner.spec.class_names} differ from the val "
                         f"split's {val.categories.names}")]
        from sskd_deploy.runtime.base import evaluate_with

        log(f"report: scoring {len(val)} val images with {described}")
        result, predictions = evaluate_with(runner, val)
    finally:
        runner.close()
    best, worst = best_and_worst(score_images(val, predictions), num)
    intro = para(f"Model {described}; val mask AP {fmt(result.ap, 2, scale=100)} over {len(val)} images. "
                 "Each image is ranked by its own mask AP (pycocotools on that image alone).")
    return [intro, _gallery(f"Best {len(best)}", best, val, predictions),
            _gallery(f"Worst {len(worst)}", worst, val, predictions)]


def overlay_section(*, run: RunFiles, config: Any | None, num: int, log: Callable[[str], None]) -> Section:
    """The galleries, or one note saying why there are none (no config, model, data, or num == 0)."""
    if num <= 0:
        return section("overlays", TITLE, [note("not drawn: --num-overlays 0")])
    if config is None:
        return section("overlays", TITLE, [missing(CONFIG, "run")])
    try:
        parts = _overlay_parts(run, config, num, log)
    except SSKDError as err:  # unreadable model or data: the rest of the report is still worth having
        parts = [note(f"not available: {err}")]
    return section("overlays", TITLE, parts)
