"""Block grouping and the greedy AP-budget search, on names and a fake evaluate (no graphs, instant).

The same search over a real quantized graph is tested in ``test_int8.py``.
"""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")

from sskd_deploy.export.mixed_precision import block_of, greedy_search, group_blocks


@pytest.mark.parametrize(("name", "block"), [
    ("/model/encoder/backbone/encoder/layer/1/attention/q_proj/node_MatMul_200", "encoder.backbone.encoder.layer.1"),
    ("/model/encoder/backbone/encoder/layer/11/mlp/fc1/node_MatMul_9", "encoder.backbone.encoder.layer.11"),
    ("/model/encoder/backbone/embeddings/patch_embeddings/projection/node_Conv_1", "encoder.backbone.embeddings"),
    ("/model/pixel_decoder/reassemble/2/project/node_Conv_5", "pixel_decoder.reassemble.2"),
    ("/model/pixel_decoder/fusion/0/rcu_out/conv1/node_Conv_7", "pixel_decoder.fusion.0"),
    ("/model/pixel_decoder/mask_head/3/node_Conv_1551", "pixel_decoder.mask_head"),
    ("/model/pixel_decoder/conv_path/pyramid/levels/2/1/conv1/0/node_Conv_9", "pixel_decoder.conv_path.pyramid.levels.2"),
    ("/model/pixel_decoder/conv_path/proj/3/0/node_Conv_4", "pixel_decoder.conv_path.proj"),
    ("/model/encoder/pyramid/stem/1/0/node_Conv_2", "encoder.pyramid.stem"),
    ("/model/transformer_decoder/layers/2/cross_attn/node_MatMul_3", "transformer_decoder.layers.2"),
    ("/model/transformer_decoder/mask_embed/layers/0/node_MatMul_4", "transformer_decoder.mask_embed"),
    ("/model/transformer_decoder/class_embed/node_MatMul_1234", "transformer_decoder.class_embed"),
    ("/model/transformer_decoder/node_matmul", "transformer_decoder"),  # the mask-logit product
    ("/model/pixel_decoder/mask_headless/node_Conv_2", "pixel_decoder"),  # prefix match stops at '/'
    ("/select/node_topk__1", None),
    ("Gather_token_1", None),
])
def test_block_of(name, block) -> None:
    assert block_of(name) == block


def test_group_blocks_keeps_graph_order() -> None:
    names = ["/model/encoder/backbone/encoder/layer/0/a/n1", "/select/n", "/model/pixel_decoder/fusion/0/x/n2",
             "/model/encoder/backbone/encoder/layer/0/b/n3"]
    assert group_blocks(names) == {"encoder.backbone.encoder.layer.0": [names[0], names[3]],
                                   "pixel_decoder.fusion.0": [names[2]]}


COSTS = {"a": 0.002, "b": 0.03, "c": 0.01, "d": 0.0}  # AP each block loses when it is INT8


def fake_ap(calls: list):
    def evaluate(float_blocks: frozenset[str]) -> float:
        calls.append(float_blocks)
        return 0.60 - sum(cost for block, cost in COSTS.items() if block not in float_blocks)
    return evaluate


def test_full_int8_within_budget_stops_at_once() -> None:
    calls: list = []
    report = greedy_search(list(COSTS), fake_ap(calls), reference_ap=0.60, max_ap_drop=0.05)
    assert report["budget_met"] and report["float_blocks"] == [] and calls == [frozenset()]
    assert report["sensitivity"] == [] and report["final_ap"] == pytest.approx(0.558)


def test_greedy_keeps_most_sensitive_blocks_first() -> None:
    calls: list = []
    report = greedy_search(list(COSTS), fake_ap(calls), reference_ap=0.60, max_ap_drop=0.01)
    assert report["budget_met"] and report["float_blocks"] == ["b", "c"]
    gains = {s["block"]: round(s["gain"], 6) for s in report["sensitivity"]}
    assert gains == {"a": 0.002, "b": 0.03, "c": 0.01, "d": 0.0}
    assert [round(s["drop"], 6) for s in report["steps"]] == [0.042, 0.012, 0.002]
    assert len(calls) == len(set(calls)) == report["evaluations"] == 1 + 4 + 1  # the {b} step was reused


def test_budget_never_met_ends_with_everything_float() -> None:
    report = greedy_search(list(COSTS), fake_ap([]), reference_ap=0.70, max_ap_drop=0.01)
    assert not report["budget_met"] and report["float_blocks"] == ["b", "c", "a", "d"]


def test_none_ap_is_an_error() -> None:
    with pytest.raises(ValueError, match="no AP"):
        greedy_search(["a"], lambda blocks: None, reference_ap=0.5, max_ap_drop=0.01)
