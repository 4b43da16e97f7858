"""In-process prediction and validation AP, always through the deploy wrapper.

Training-time evaluation, calibration checks and the PyTorch baseline of every parity report go
through here, so the number a user sees while training is the number the exported model is
compared against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from sskd_deploy.data.image_io import read_image
from sskd_deploy.data.records import Dataset
from sskd_deploy.evaluation import EvalResult, evaluate_instances
from sskd_deploy.models.deploy import DeployWrapper
from sskd_deploy.postprocess import postprocess_batch
from sskd_deploy.preprocess import preprocess_batch
from sskd_deploy.structures import Instances


def _batches(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


@torch.inference_mode()
def predict_images(
    wrapper: DeployWrapper,
    images: Sequence[np.ndarray],
    *,
    batch_size: int = 8,
    score_threshold: float = 0.0,
    device: str | torch.device = "cpu",
) -> list[Instances]:
    """Preprocess, run the wrapper, postprocess: RGB uint8 ``(H, W, 3)`` images -> Instances at their own size."""
    spec = wrapper.spec
    results: list[Instances] = []
    wrapper.eval()
    for index in _batches(len(images), batch_size):
        batch, infos = preprocess_batch([images[i] for i in index], spec.input_size)
        scores, labels, masks = wrapper(torch.from_numpy(batch).to(device))
        results += postprocess_batch(
            scores.cpu().numpy(), labels.cpu().numpy(), masks.cpu().numpy(), infos, score_threshold=score_threshold
        )
    return results


def evaluate_wrapper(
    wrapper: DeployWrapper,
    dataset: Dataset,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[EvalResult, dict[int, Instances]]:
    """Mask AP of ``wrapper`` on a labeled ``dataset``; also returns the predictions by image id."""
    predictions: dict[int, Instances] = {}
    records = dataset.records
    for index in _batches(len(records), batch_size):
        chunk = [records[i] for i in index]
        outs = predict_images(wrapper, [read_image(r.path) for r in chunk], batch_size=batch_size, device=device)
        predictions.update({r.image_id: inst for r, inst in zip(chunk, outs)})
        if progress is not None:
            progress(index.stop, len(records))
    return evaluate_instances(dataset, predictions), predictions
