"""Mask2Former decoder: masked attention really masks, deep supervision, batch independence, init."""

from __future__ import annotations

import math

import pytest
import torch

from sskd_deploy.config.model import PRESETS, DecoderConfig
from sskd_deploy.models.transformer_decoder import (
    NO_OBJECT_PRIOR,
    DecoderLayer,
    TransformerDecoder,
    attention_bias,
)

SIZE = (64, 96)


def make_decoder(config: DecoderConfig, num_classes: int = 5, in_channels: int = 48, mask_dim: int = 32):
    torch.manual_seed(0)
    decoder = TransformerDecoder(
        config=config, in_channels=in_channels, mask_dim=mask_dim, num_classes=num_classes, input_size=SIZE
    )
    h, w = SIZE
    multi_scale = [torch.randn(2, in_channels, h // s, w // s) for s in (32, 16, 8)]
    return decoder, multi_scale, torch.randn(2, mask_dim, h // 4, w // 4)


@pytest.mark.parametrize("preset", ["student-tiny", "teacher-tiny"])
def test_shapes_and_deep_supervision(preset: str) -> None:
    config = PRESETS[preset].decoder
    decoder, multi_scale, mask_features = make_decoder(config)
    out = decoder(multi_scale, mask_features)
    k, (h, w) = config.num_queries, SIZE
    assert out["pred_logits"].shape == (2, k, 6)
    assert out["pred_masks"].shape == (2, k, h // 4, w // 4)
    assert len(out["aux_outputs"]) == config.num_layers
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, k, 6) and aux["pred_masks"].shape == (2, k, h // 4, w // 4)
    # Each layer changes the queries, so no two predictions coincide.
    assert not torch.allclose(out["aux_outputs"][-1]["pred_masks"], out["pred_masks"])


def test_attention_bias_hides_background_and_keeps_empty_rows() -> None:
    logits = torch.full((1, 2, 8, 8), -3.0)
    logits[0, 0, :, :4] = 3.0  # query 0: left half foreground; query 1: nothing
    bias = attention_bias(logits, (4, 4), num_heads=3)
    assert bias.shape == (3, 2, 16)
    left = torch.arange(16) % 4 < 2
    for head in range(3):
        assert (bias[head, 0, left] == 0).all() and torch.isneginf(bias[head, 0, ~left]).all()
        assert (bias[head, 1] == 0).all()  # an empty mask would leave no support: un-masked


def test_attention_bias_is_batch_major_over_heads() -> None:
    # nn.MultiheadAttention reads a (B * heads, ...) mask as index b * heads + h.
    logits = torch.stack([torch.full((1, 4, 4), 1.0), torch.full((1, 4, 4), -1.0)])
    logits[1, 0, 0, 0] = 1.0
    bias = attention_bias(logits, (4, 4), num_heads=2)
    assert (bias[:2] == 0).all()
    assert torch.isneginf(bias[2:, 0, 1:]).all() and (bias[2:, 0, 0] == 0).all()


def test_masked_cross_attention_ignores_hidden_memory() -> None:
    torch.manual_seed(0)
    layer = DecoderLayer(dim=32, num_heads=4, ffn_dim=64, dropout=0.0).eval()
    queries, query_pos = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    memory, memory_pos = torch.randn(2, 24, 32), torch.randn(1, 24, 32)
    logits = torch.full((2, 5, 4, 6), -2.0)
    logits[..., :3] = 2.0  # every query sees the left half of the 4x6 memory only
    bias = attention_bias(logits, (4, 6), num_heads=4)
    hidden = torch.arange(24) % 6 >= 3
    noise = torch.randn_like(memory) * 10
    hidden_changed = torch.where(hidden[:, None], memory + noise, memory)
    seen_changed = torch.where(hidden[:, None], memory, memory + noise)
    no_mask = torch.zeros_like(bias)
    with torch.no_grad():
        base = layer(queries, query_pos, memory, memory_pos, bias)
        changed_hidden = layer(queries, query_pos, hidden_changed, memory_pos, bias)
        changed_seen = layer(queries, query_pos, seen_changed, memory_pos, bias)
        unmasked = layer(queries, query_pos, hidden_changed, memory_pos, no_mask)
        unmasked_base = layer(queries, query_pos, memory, memory_pos, no_mask)
    torch.testing.assert_close(changed_hidden, base)
    assert not torch.allclose(changed_seen, base, atol=1e-3)
    assert not torch.allclose(unmasked, unmasked_base, atol=1e-3)  # without the mask the same change matters


def test_each_sample_is_decoded_independently() -> None:
    decoder, multi_scale, mask_features = make_decoder(PRESETS["student-tiny"].decoder)
    decoder.eval()
    with torch.no_grad():
        both = decoder(multi_scale, mask_features)
        second = decoder([m[1:] for m in multi_scale], mask_features[1:])
    torch.testing.assert_close(both["pred_logits"][1:], second["pred_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both["pred_masks"][1:], second["pred_masks"], atol=1e-4, rtol=1e-4)


def test_class_head_starts_at_the_no_object_prior() -> None:
    decoder, multi_scale, mask_features = make_decoder(PRESETS["student-tiny"].decoder, num_classes=8)
    with torch.no_grad():
        prob = decoder(multi_scale, mask_features)["pred_logits"].softmax(-1)
    assert prob[..., -1].sub(NO_OBJECT_PRIOR).abs().max() < 0.1
    assert prob[..., :-1].mean().item() == pytest.approx((1 - NO_OBJECT_PRIOR) / 8, abs=0.02)
    assert decoder.class_embed.bias[-1].item() == pytest.approx(math.log(8.0))


def test_gradients_reach_every_parameter() -> None:
    # 3 layers visit all three memory levels; in_channels != dim so the input projections exist.
    decoder, multi_scale, mask_features = make_decoder(PRESETS["student-tiny"].decoder)
    out = decoder(multi_scale, mask_features)
    preds = [out] + out["aux_outputs"]
    sum(p["pred_logits"].logsumexp(-1).mean() + p["pred_masks"].sigmoid().mean() for p in preds).backward()
    for name, param in decoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_dropout_only_in_training() -> None:
    config = PRESETS["student-tiny"].decoder.model_copy(update={"dropout": 0.3})
    decoder, multi_scale, mask_features = make_decoder(config)
    with torch.no_grad():
        train_a, train_b = (decoder(multi_scale, mask_features)["pred_masks"] for _ in range(2))
        decoder.eval()
        eval_a, eval_b = (decoder(multi_scale, mask_features)["pred_masks"] for _ in range(2))
    assert not torch.equal(train_a, train_b)
    assert torch.equal(eval_a, eval_b)
