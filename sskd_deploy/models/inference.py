"""In-process prediction and validation AP, always through the deploy wrapper.

Training-time evaluation, calibration checks and the PyTorch baseline of every parity report go
through here, so the number a user sees while training is the number the exported model is
compared against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from sskd_deploy.data.records import Dataset
from sskd_deploy.evaluation import EvalResult
from sskd_deploy.models.deploy import DeployWrapper
from sskd_deploy.evaluation.prediction import evaluate_dataset, predict_batches
from sskd_deploy.structures import Instances


def _batch_fn(wrapper: DeployWrapper, device: str | torch.device):
    wrapper.eval()

    @torch.inference_mode()
    def run(batch: np.ndarray):
        scores, labels, masks = wrapper(torch.from_numpy(batch).to(device))
        return scores.cpu().numpy(), labels.cpu().numpy(), masks.cpu().numpy()

    return run


def predict_images(
    wrapper: DeployWrapper,
    images: Sequence[np.ndarray],
    *,
    batch_size: int = 8,
    score_threshold: float = 0.0,
    device: str | torch.device = "cpu",
) -> list[Instances]:
    """Preprocess, run the wrapper, postprocess: RGB uint8 ``(H, W, 3)`` images -> Instances at their own size."""
    return predict_batches(_batch_fn(wrapper, device), wrapper.spec.input_size, images, batch_size=batch_size,
                           score_threshold=score_threshold)


def evaluate_wrapper(
    wrapper: DeployWrapper,
    dataset: Dataset,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[EvalResult, dict[int, Instances]]:
    """Mask AP of ``wrapper`` on a labeled ``dataset``; also returns the predictions by image id."""
    return evaluate_dataset(_batch_fn(wrapper, device), wrapper.spec.input_size, dataset, batch_size=batch_size,
                            progress=progress)
