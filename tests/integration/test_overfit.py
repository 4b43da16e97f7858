"""student-tiny memorises 4 synthetic images: the whole model path (data -> preprocess -> model ->
criterion -> deploy wrapper -> postprocess -> COCO AP) can learn. About 1.5 minutes on 2 cores.

The images are 128x160 and the model input is twice that, so the stride-4 mask grid is at
stride 2 of the image: at stride 4 of the image, even perfect stride-4 masks of these small
shapes score only ~0.7-0.88 AP (measured with downsampled ground truth), below the 0.9 asked for.
"""

from __future__ import annotations

import pytest
import torch

from sskd_deploy.config.model import PRESETS
from sskd_deploy.data.image_io import read_image
from sskd_deploy.data.layout import open_dataset_dir
from sskd_deploy.data.synth import generate_synthetic
from sskd_deploy.models.criterion import SetCriterion
from sskd_deploy.models.deploy import DeployWrapper
from sskd_deploy.models.inference import evaluate_wrapper
from sskd_deploy.models.maskformer import build_model
from sskd_deploy.preprocess import preprocess_image, resize_masks_for_input
from sskd_deploy.spec import IOSpec

pytestmark = pytest.mark.slow


def test_student_tiny_overfits_four_images(tmp_path) -> None:
    torch.manual_seed(0)
    root = generate_synthetic(tmp_path / "ds", seed=1, num_train=4, num_val=1, labeled_fraction=1.0,
                              image_size=(128, 160))
    assert root["generator"]["num_train"] == 4
    dataset = open_dataset_dir(tmp_path / "ds")["train_labeled"]
    config = PRESETS["student-tiny"].with_classes(len(dataset.categories)).updated(input_size=(256, 320))
    images, targets = [], []
    for record in dataset.records:
        chw, info = preprocess_image(read_image(record.path), config.input_size)
        inst = record.instances()
        images.append(torch.from_numpy(chw))
        targets.append({"labels": torch.from_numpy(inst.labels),
                        "masks": torch.from_numpy(resize_masks_for_input(inst.masks, info))})
    batch = torch.stack(images)
    model = build_model(config)
    # The recipe's importance-sampled point losses (train.num_points): they supervise the stride-2 logits
    # against the full-resolution masks. Measured AP after 300 steps: 1.00 (1 thread) and 0.96 (2 threads);
    # with whole-mask losses it scored 0.86 in a 2-worker suite run and passed at 1 thread: too close to the bar.
    criterion = SetCriterion(num_classes=config.num_classes, num_points=4096)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    first = None
    for _ in range(300):
        model.train()
        loss = criterion(model(model.normalize(batch)), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.1 * first
    wrapper = DeployWrapper(model=model.eval(), spec=IOSpec.from_model_config(config, dataset.categories.names))
    result, predictions = evaluate_wrapper(wrapper, dataset)
    assert len(predictions) == 4
    assert result.ap >= 0.9, result.to_dict()
