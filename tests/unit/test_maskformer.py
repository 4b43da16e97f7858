"""The assembled MaskFormer: shapes on non-square inputs, gradients, determinism, helpers, ONNX parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sskd_deploy.model_config import PRESETS, ModelConfig
from sskd_deploy.models.maskformer import MaskFormer, build_model


def tiny(preset: str, size: tuple[int, int], classes: int = 5) -> ModelConfig:
    return PRESETS[preset].with_classes(classes).updated(input_size=size)


def built(config: ModelConfig) -> MaskFormer:
    torch.manual_seed(0)
    return build_model(config)


@pytest.mark.parametrize("preset", ["student-tiny", "teacher-tiny"])
@pytest.mark.parametrize("size", [(96, 128), (64, 96)])
def test_output_shapes(preset: str, size: tuple[int, int]) -> None:
    config = tiny(preset, size)
    model = built(config)
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    k, (h, w) = config.decoder.num_queries, size
    assert out["pred_logits"].shape == (2, k, 6)
    assert out["pred_masks"].shape == (2, k, h // 4, w // 4)
    assert len(out["aux_outputs"]) == config.decoder.num_layers
    assert all(a["pred_masks"].shape == out["pred_masks"].shape for a in out["aux_outputs"])
    p = config.encoder.patch_size
    assert out["features"].shape == (2, config.encoder.hidden_size, h // p, w // p)


def test_gradients_reach_every_trainable_parameter() -> None:
    model = built(tiny("student-tiny", (64, 96)))
    out = model(torch.randn(2, 3, 64, 96))
    loss = out["features"].square().mean()
    for pred in [out] + out["aux_outputs"]:
        loss = loss + pred["pred_logits"].log_softmax(-1)[..., 0].mean() + pred["pred_masks"].sigmoid().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not [n for n in zero if not n.startswith("encoder.")]
    assert len(zero) <= 0.02 * len(list(model.parameters())), zero


def test_eval_is_deterministic() -> None:
    model = built(tiny("teacher-tiny", (64, 96))).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_masks"], b["pred_masks"])


def test_same_seed_same_model() -> None:
    config = tiny("student-tiny", (64, 96))
    a, b = built(config).state_dict(), built(config).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any("pixel_mean" in k or "memory_pos" in k for k in a)  # config-derived, not checkpointed


def test_normalize_uses_the_config_statistics() -> None:
    config = tiny("student-tiny", (64, 96))
    model = built(config)
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    mean = torch.tensor(config.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(config.pixel_std).view(1, 3, 1, 1)
    expected = (images.float() - mean) / std
    torch.testing.assert_close(model.normalize(images), expected)
    torch.testing.assert_close(model.normalize(images.float()), expected)
    assert model.normalize(images).dtype == torch.float32


def test_parameter_groups_and_parts_cover_the_model() -> None:
    model = built(tiny("student-tiny", (64, 96)))
    groups = model.parameter_groups()
    ids = {name: {id(p) for p in params} for name, params in groups.items()}
    assert set(groups) == {"encoder", "decoder"} and not ids["encoder"] & ids["decoder"]
    assert ids["encoder"] | ids["decoder"] == {id(p) for p in model.parameters()}
    assert ids["encoder"] == {id(p) for p in model.encoder.parameters()}
    parts = model.parts()
    assert list(parts) == ["encoder", "pixel_decoder", "transformer_decoder"]
    assert sum(p.numel() for part in parts.values() for p in part.parameters()) == sum(
        p.numel() for p in model.parameters()
    )
    model.encoder.requires_grad_(False)
    assert model.parameter_groups()["encoder"] == []


def test_rejects_an_input_of_another_size() -> None:
    model = built(tiny("student-tiny", (64, 96)))
    with pytest.raises(ValueError, match=r"input_size \(64, 96\)"):
        model(torch.randn(1, 3, 96, 128))


def test_onnx_export_matches_onnxruntime(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")

    class Flat(torch.nn.Module):
        """Named tensors instead of the nested dict: what an exporter sees."""

        def __init__(self, model: MaskFormer) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.model(pixel_values)
            return out["pred_logits"], out["pred_masks"]

    flat = Flat(built(tiny("student-tiny", (64, 96)))).eval()
    x = torch.randn(2, 3, 64, 96)
    path = tmp_path / "maskformer.onnx"
    torch.onnx.export(flat, (x,), str(path), dynamo=True, input_names=["pixel_values"],
                      output_names=["pred_logits", "pred_masks"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, masks = session.run(None, {"pixel_values": x.numpy()})
    with torch.no_grad():
        ref_logits, ref_masks = flat(x)
    np.testing.assert_allclose(logits, ref_logits.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(masks, ref_masks.numpy(), rtol=1e-4, atol=1e-4)
