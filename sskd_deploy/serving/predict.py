"""Client side of serving: image files -> concurrent requests -> instances -> COCO JSON and overlay PNGs.

Decoding, resizing/padding and postprocessing happen here with the project's one implementation
(:func:`sskd_deploy.preprocess.preprocess_batch`, :func:`sskd_deploy.evaluation.postprocess.postprocess_batch`);
the server only runs the graph on the uint8 tensor. A file that cannot be read is reported by name
and skipped; the other images are still predicted and written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sskd_deploy.data.folder import list_images
from sskd_deploy.data.image_io import read_image
from sskd_deploy.data.records import CategorySet
from sskd_deploy.errors import SSKDError
from sskd_deploy.io import atomic_write_bytes, atomic_write_json
from sskd_deploy.evaluation.postprocess import instances_to_coco_results, postprocess_batch
from sskd_deploy.preprocess import preprocess_batch
from sskd_deploy.runtime.base import Runner
from sskd_deploy.structures import Instances, rle_area


@dataclass
class PredictResult:
    files: list[Path] = field(default_factory=list)  # predicted, in input order
    instances: list[Instances] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)  # {"file", "error"}
    seconds: float = 0.0


def expand_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Files as given; directories contribute their images (the folder reader's rules: recursive, sorted)."""
    files: list[Path] = []
    for item in inputs:
        item = Path(item)
        files += [item / rel for rel in list_images(item)] if item.is_dir() else [item]
    return files


def predict_files(runner: Runner, files: Sequence[Path], *, concurrency: int = 4, batch_size: int = 1,
                  score_threshold: float = 0.0, progress: Callable[[int, int], None] | None = None) -> PredictResult:
    """Send ``files`` in requests of ``batch_size`` images, ``concurrency`` requests in flight."""
    import time

    if concurrency < 1 or batch_size < 1:
        raise SSKDError(f"concurrency and batch size must be >= 1, got {concurrency} and {batch_size}")
    result = PredictResult()
    images: list[tuple[Path, np.ndarray]] = []
    for path in files:
        try:
            images.append((Path(path), read_image(path)))
        except SSKDError as err:
            result.failures.append({"file": str(path), "error": getattr(err, "problem", str(err))})
    size = min(batch_size, runner.max_batch)
    groups = [images[i : i + size] for i in range(0, len(images), size)]

    def request(group: list[tuple[Path, np.ndarray]]) -> list[Instances]:
        batch, infos = preprocess_batch([image for _, image in group], runner.spec.input_size)
        scores, labels, masks = runner.run(batch)
        return postprocess_batch(scores, labels, masks, infos, score_threshold=score_threshold)

    start = time.perf_counter()
    done = 0
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(request, group) for group in groups]
        for group, future in zip(groups, futures):
            try:
                outs = future.result()
            except SSKDError as err:
                result.failures += [{"file": str(p), "error": str(err)} for p, _ in group]
            else:
                result.files += [p for p, _ in group]
                result.instances += outs
            done += len(group)
            if progress is not None:
                progress(done, len(images))
    result.seconds = time.perf_counter() - start
    return result


def coco_predictions(files: Sequence[Path], instances: Sequence[Instances], class_names: Sequence[str]) -> dict[str, Any]:
    """COCO-style results: images, categories (id = class index + 1), and one entry per instance with an
    RLE mask, its box, area and score."""
    categories = CategorySet(tuple(class_names), tuple(range(1, len(class_names) + 1)))
    images, annotations = [], []
    for image_id, (path, inst) in enumerate(zip(files, instances), start=1):
        h, w = inst.image_size
        images.append({"id": image_id, "file_name": str(path), "height": h, "width": w})
        for result in instances_to_coco_results(inst, image_id, categories):
            annotations.append({"id": len(annotations) + 1, **result, "area": rle_area(result["segmentation"]),
                                "iscrowd": 0})
    return {"images": images, "categories": categories.coco_categories(), "annotations": annotations}


def write_predictions(result: PredictResult, class_names: Sequence[str], out_dir: Path, *,
                      overlays: bool = True, overlay_threshold: float = 0.5) -> Path:
    """``predictions.json`` plus ``overlays/<stem>.png`` (instances above ``overlay_threshold``)."""
    import io

    from PIL import Image

    from sskd_deploy.data.visualize import overlay_instances

    out_dir = Path(out_dir)
    path = atomic_write_json(out_dir / "predictions.json", {
        **coco_predictions(result.files, result.instances, class_names), "failures": result.failures})
    if overlays:
        used: set[str] = set()
        for file, inst in zip(result.files, result.instances):
            stem, n = file.stem, 1
            while stem in used:  # same name in different folders
                n += 1
                stem = f"{file.stem}_{n}"
            used.add(stem)
            keep = inst.subset(np.flatnonzero(inst.scores >= overlay_threshold))
            picture = overlay_instances(read_image(file), keep, class_names, show_scores=True)
            buffer = io.BytesIO()
            Image.fromarray(picture).save(buffer, format="PNG")
            atomic_write_bytes(out_dir / "overlays" / f"{stem}.png", buffer.getvalue())
    return path
