"""Deploy wrapper, checkpoints and model info on student-tiny."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sskd_deploy.config.model import PRESETS
from sskd_deploy.errors import InputError
from sskd_deploy.models.checkpoint import load_model, read_checkpoint, save_checkpoint
from sskd_deploy.models.deploy import DeployWrapper, select_top_k
from sskd_deploy.evaluation.postprocess import postprocess
from sskd_deploy.preprocess import preprocess_image
from sskd_deploy.spec import IOSpec

CLASSES = ("a", "b", "c")


def _tiny(input_size=(64, 96)):
    from sskd_deploy.models.maskformer import build_model

    torch.manual_seed(0)
    config = PRESETS["student-tiny"].with_classes(len(CLASSES)).updated(input_size=input_size)
    model = build_model(config).eval()
    return model, config, IOSpec.from_model_config(config, CLASSES)


def test_select_top_k_by_hand() -> None:
    # 2 queries, 2 classes (+ no-object); query 1 is confident in class 0 with a half-on mask.
    logits = torch.log(torch.tensor([[[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]]]))
    masks = torch.full((1, 2, 2, 2), -3.0)
    masks[0, 1, 0, :] = 2.0
    masks[0, 0] = 1.0
    scores, labels, chosen = select_top_k(logits, masks, top_k=2)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    assert labels.tolist() == [[0, 1]]
    assert scores[0, 0].item() == pytest.approx(0.8 * sig(2.0), rel=1e-5)
    assert scores[0, 1].item() == pytest.approx(0.2 * sig(1.0), rel=1e-5)
    assert torch.equal(chosen[0, 0], masks[0, 1]) and torch.equal(chosen[0, 1], masks[0, 0])


def test_wrapper_outputs_follow_the_spec() -> None:
    model, _, spec = _tiny()
    wrapper = DeployWrapper(model=model, spec=spec)
    images = torch.randint(0, 255, (2, *spec.input.shape[1:]), dtype=torch.uint8)
    with torch.no_grad():
        outputs = wrapper(images)
    for tensor, tspec in zip(outputs, spec.outputs):
        assert tuple(tensor.shape) == tspec.shape_for_batch(2)
        assert str(tensor.dtype).removeprefix("torch.") == tspec.dtype


def test_wrapper_agrees_with_model_plus_postprocess() -> None:
    model, config, spec = _tiny()
    wrapper = DeployWrapper(model=model, spec=spec)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (50, 90, 3), dtype=np.uint8)
    chw, info = preprocess_image(image, spec.input_size)
    batch = torch.from_numpy(chw)[None]
    with torch.no_grad():
        scores, labels, masks = wrapper(batch)
        raw = model((batch.float() - torch.tensor(config.pixel_mean).view(1, 3, 1, 1))
                    / torch.tensor(config.pixel_std).view(1, 3, 1, 1))
    probs = raw["pred_logits"].softmax(-1)[0, :, :-1]
    best = probs.flatten().topk(spec.top_k).values
    mask_prob = masks[0].sigmoid()
    inside = (masks[0] > 0).float()
    expected = best * (mask_prob * inside).sum((1, 2)) / (inside.sum((1, 2)) + 1e-6)
    torch.testing.assert_close(scores[0], expected)
    instances = postprocess(scores[0].numpy(), labels[0].numpy(), masks[0].numpy(), info)
    assert instances.image_size == (50, 90) and len(instances) == spec.top_k


def test_checkpoint_round_trip(tmp_path) -> None:
    model, config, spec = _tiny()
    for name in ("model.safetensors", "model.pt"):
        path = save_checkpoint(tmp_path / name, model=model, config=config, spec=spec, extra={"step": 7})
        loaded, ckpt = load_model(path, expect=config)
        assert ckpt.spec == spec and ckpt.extra == {"step": 7}
        x = torch.randn(1, 3, *config.input_size)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x)["pred_masks"], model(x)["pred_masks"])
    assert not list(tmp_path.glob(".*tmp"))


def test_checkpoint_into_other_config_fails_clearly(tmp_path) -> None:
    model, config, spec = _tiny()
    path = save_checkpoint(tmp_path / "m.safetensors", model=model, config=config, spec=spec)
    other = config.updated(decoder={"num_queries": 30})
    with pytest.raises(InputError, match=r"m\.safetensors.*decoder\.num_queries"):
        load_model(path, expect=other)


def test_checkpoint_of_the_stretched_patch_grid_is_refused(tmp_path) -> None:
    """Version-1 files (ViT grid stretched over the image) would load without a shape error and predict
    misplaced masks: they are refused, saying why."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model, config, spec = _tiny()
    path = save_checkpoint(tmp_path / "m.safetensors", model=model, config=config, spec=spec)
    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
    assert meta["version"] == "2"
    del meta["version"]
    save_file(load_file(str(path)), str(tmp_path / "old.safetensors"), metadata=meta)
    with pytest.raises(InputError, match=r"old\.safetensors: checkpoint version 1.*stretched.*retrain"):
        read_checkpoint(tmp_path / "old.safetensors")


@pytest.mark.parametrize("content", [b"", b"garbage" * 10])
def test_corrupt_checkpoint(tmp_path, content: bytes) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    with pytest.raises(InputError, match="bad.safetensors"):
        read_checkpoint(bad)
    with pytest.raises(InputError, match="not found"):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_model_info_counts_parts() -> None:
    from sskd_deploy.models.info import model_info

    config = PRESETS["student-tiny"].with_classes(3).updated(input_size=(64, 96))
    info = model_info(config, iters=1)
    parts = {k: v for k, v in info.parameters.items() if k != "total"}
    assert sum(parts.values()) == info.parameters["total"] and min(parts.values()) > 0
    assert info.gflops > 0 and info.gmacs == pytest.approx(info.gflops / 2) and info.latency_ms > 0
