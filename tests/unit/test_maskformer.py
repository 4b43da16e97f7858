"""The assembled MaskFormer: shapes on non-square inputs, gradients, determinism, helpers, ONNX parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sskd_deploy.config.model import PRESETS, ModelConfig
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
    assert out["features"].shape == (2, config.encoder.hidden_size, -(-h // p), -(-w // p))  # padded to whole patches


def test_gradients_reach_every_trainable_parameter() -> None:
    model = built(tiny("student-tiny", (64, 96)))
    out = model(torch.randn(2, 3, 64, 96))
    loss = out["features"].square().mean() + sum(level.square().mean() for level in out.get("aux_semantic", []))
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
    groups = model.parameter_groups(decay_embeddings=True)
    ids = {name: {id(p) for p in params} for name, params in groups.items()}
    assert set(groups) == {"encoder", "decoder"} and not ids["encoder"] & ids["decoder"]
    assert ids["encoder"] | ids["decoder"] == {id(p) for p in model.parameters()}
    assert ids["encoder"] == {id(p) for p in model.encoder.parameters()}
    # by default the learned embeddings sit in groups without weight decay, same lr as their part
    names = {id(p): n for n, p in model.named_parameters()}
    default = {k: sorted(names[id(p)] for p in v) for k, v in model.parameter_groups().items()}
    assert default["encoder.no_decay"] == ["encoder.backbone.embeddings.cls_token",
                                           "encoder.backbone.embeddings.position_embeddings"]
    assert default["decoder.no_decay"] == ["transformer_decoder.level_embed.weight",
                                           "transformer_decoder.query_feat.weight", "transformer_decoder.query_pos.weight"]
    assert sum(len(v) for v in default.values()) == len(list(model.parameters()))
    parts = model.parts()
    assert list(parts) == ["encoder", "pixel_decoder", "transformer_decoder", "semantic_head"]
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

    # the options this project adds to the paper's student: conv path, position code, query groups
    config = tiny("student-tiny", (64, 96)).updated(
        pixel_decoder={"conv_path": True, "mask_position": True}, decoder={"query_groups": 2})
    flat = Flat(built(config)).eval()
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


def test_conv_control_encoder_builds_the_same_interface() -> None:
    config = tiny("student-tiny", (64, 96)).updated(encoder={"kind": "conv", "conv_widths": (16, 24, 32, 40)})
    model = built(config)
    out = model(torch.randn(2, 3, 64, 96))
    assert out["pred_masks"].shape == (2, 20, 16, 24) and out["features"].shape == (2, 40, 2, 3)
    assert model.encoder.tap_strides == (4, 8, 16, 32) and model.encoder.feature_stride == 32
    from sskd_deploy.errors import InputError

    with pytest.raises(InputError, match="no pretrained weights"):
        model.encoder.load_pretrained(Path("dinov2"))


def test_query_groups_train_side_by_side_and_infer_with_the_first() -> None:
    """Group DETR: in training G x K queries whose groups cannot see each other; eval runs group 0 only,
    and it is exactly the decoder a one-group model with the same weights would be."""
    config = tiny("student-tiny", (64, 96)).updated(decoder={"query_groups": 3})
    model = built(config)
    x = torch.randn(2, 3, 64, 96)
    train_out = model.train()(x)
    assert train_out["pred_logits"].shape[1] == 60 and train_out["query_groups"] == 3
    with torch.no_grad():  # changing group 2's queries leaves group 0 untouched (block-diagonal self-attention)
        model.transformer_decoder.query_feat.weight[40:] += 1.0
    moved = model(x)
    torch.testing.assert_close(moved["pred_masks"][:, :20], train_out["pred_masks"][:, :20])
    assert not torch.allclose(moved["pred_masks"][:, 40:], train_out["pred_masks"][:, 40:])
    model.eval()
    with torch.no_grad():
        eval_out = model(x)
        single = built(tiny("student-tiny", (64, 96))).eval()
        state = {k: (v[:20] if k.startswith("transformer_decoder.query_") else v) for k, v in model.state_dict().items()}
        single.load_state_dict(state)
        reference = single(x)
    assert eval_out["pred_logits"].shape[1] == 20 and "query_groups" not in eval_out
    torch.testing.assert_close(eval_out["pred_masks"], reference["pred_masks"])
