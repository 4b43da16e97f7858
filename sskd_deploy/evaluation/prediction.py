"""Images in, Instances out, through any batch function: the one predict/evaluate loop.

``run`` maps a preprocessed uint8 ``(B, 3, H, W)`` batch to ``(scores, labels, mask_logits)``
numpy arrays. The in-process PyTorch path (:mod:`sskd_deploy.models.inference`) and every runner
(:mod:`sskd_deploy.runtime.base`) pass their own ``run``, so preprocessing, postprocessing and AP are
computed identically for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from sskd_deploy.data.image_io import read_image
from sskd_deploy.data.records import Dataset
from sskd_deploy.evaluation import EvalResult, evaluate_instances
from sskd_deploy.evaluation.postprocess import postprocess_batch
from sskd_deploy.preprocess import preprocess_batch
from sskd_deploy.structures import Instances

BatchFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def predict_batches(run: BatchFn, input_size: Sequence[int], images: Sequence[np.ndarray], *, batch_size: int = 8,
                    score_threshold: float = 0.0) -> list[Instances]:
    """Preprocess, ``run``, postprocess: RGB uint8 ``(H, W, 3)`` images -> Instances at their own size."""
    results: list[Instances] = []
    for index in chunks(len(images), batch_size):
        batch, infos = preprocess_batch([images[i] for i in index], input_size)
        scores, labels, masks = run(batch)
        results += postprocess_batch(scores, labels, masks, infos, score_threshold=score_threshold)
    return results


def evaluate_dataset(run: BatchFn, input_size: Sequence[int], dataset: Dataset, *, batch_size: int = 8,
                     progress: Callable[[int, int], None] | None = None) -> tuple[EvalResult, dict[int, Instances]]:
    """Mask AP of ``run`` on a labeled ``dataset``; also returns the predictions by image id."""
    predictions: dict[int, Instances] = {}
    records = dataset.records
    for index in chunks(len(records), batch_size):
        chunk = [records[i] for i in index]
        outs = predict_batches(run, input_size, [read_image(r.path) for r in chunk], batch_size=batch_size)
        predictions.update({r.image_id: inst for r, inst in zip(chunk, outs)})
        if progress is not None:
            progress(index.stop, len(records))
    return evaluate_instances(dataset, predictions), predictions
