"""AP-budgeted INT8: quantize everything, then keep the most sensitive blocks in float until the
mask-AP drop fits the budget.

Naive post-training INT8 routinely costs 4-10 mask AP points (METHOD.md section 7) and a global
number does not say where. This search answers both: it measures, block by block, how much AP
comes back when only that block stays float (its *sensitivity*), then greedily keeps the most
sensitive blocks in float, re-quantizing with the same calibration cache (no recalibration) until
``reference_ap - ap <= max_ap_drop``.

AP units: by default those of :class:`sskd_deploy.evaluation.EvalResult`, fractions in ``[0, 1]``,
so one AP point is ``0.01`` and the default budget ``max_ap_drop=0.01`` is one point. The search
only compares differences, so a caller working in points passes ``evaluate``, ``reference_ap``
and ``max_ap_drop`` all in points (``max_ap_drop=1.0``); mixing the two is the one way to misuse it.

Blocks are module-path prefixes of the exporter's node names (``/model/<module path>/<node>``):
encoder layer ``i``, the embeddings, pixel-decoder reassemble / fusion stage ``j``, its mask head,
transformer-decoder layer ``k``, the class and mask-embedding heads, and what is left of each
top-level module (reshapes, upsampling, the mask-logit product) as one block each.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import onnx

from sskd_deploy.export.calibration import CalibrationSelection
from sskd_deploy.export.int8 import QUANT_OP_TYPES, prepare_for_quantization, quantizable_nodes, quantize_int8
from sskd_deploy.spec import IOSpec

# Matched against the module path below ``/model/``; the first rule that matches names the block.
BLOCK_RULES = tuple(re.compile(p + r"(?=/|$)") for p in (
    r"encoder/backbone/encoder/layer/\d+",
    r"encoder/backbone/embeddings",
    r"encoder/pyramid/(stem|levels/\d+)",  # encoder.kind: conv
    r"pixel_decoder/conv_path/pyramid/(stem|levels/\d+)",
    r"pixel_decoder/conv_path/proj",
    r"pixel_decoder/(reassemble|fusion)/\d+",
    r"pixel_decoder/mask_head",
    r"transformer_decoder/layers/\d+",
    r"transformer_decoder/(class_embed|mask_embed)",
))


def block_of(node_name: str) -> str | None:
    """The block a node belongs to (``encoder.backbone.encoder.layer.3``), or None outside the model
    (the deploy wrapper's ``/select/`` tail, nodes without a module path)."""
    parts = node_name.split("/")[1:-1]  # leading "" and the node's own name dropped
    if not parts or parts[0] != "model":
        return None
    path = "/".join(parts[1:])
    for rule in BLOCK_RULES:
        match = rule.match(path)
        if match:
            return match.group(0).replace("/", ".")
    return parts[1] if len(parts) > 1 else "model"


def group_blocks(node_names: Iterable[str]) -> dict[str, list[str]]:
    """Node names grouped by :func:`block_of`, blocks in order of first appearance (graph order)."""
    blocks: dict[str, list[str]] = {}
    for name in node_names:
        block = block_of(name)
        if block is not None:
            blocks.setdefault(block, []).append(name)
    return blocks


def greedy_search(blocks: Sequence[str], evaluate_float: Callable[[frozenset[str]], float], *,
                  reference_ap: float, max_ap_drop: float) -> dict[str, Any]:
    """The search itself, on block names only: ``evaluate_float(float_blocks)`` -> AP.

    1. everything INT8; done when the drop fits the budget;
    2. sensitivity of each block = AP with only that block float - AP of full INT8;
    3. keep blocks float in order of decreasing sensitivity (ties: graph order) until it fits.
    Each distinct set is evaluated once.
    """
    memo: dict[frozenset[str], float] = {}

    def ap_of(float_blocks: Iterable[str]) -> float:
        key = frozenset(float_blocks)
        if key not in memo:
            ap = evaluate_float(key)
            if ap is None:
                raise ValueError("evaluate returned None: the labeled split gives no AP (no ground truth?)")
            memo[key] = float(ap)
        return memo[key]

    def fits(ap: float) -> bool:
        return reference_ap - ap <= max_ap_drop + 1e-12

    steps = [{"float_blocks": [], "ap": ap_of(())}]
    sensitivity = []
    if not fits(steps[0]["ap"]):
        sensitivity = [{"block": b, "ap": ap_of({b}), "gain": ap_of({b}) - steps[0]["ap"]} for b in blocks]
        order = sorted(range(len(blocks)), key=lambda i: (-sensitivity[i]["gain"], i))
        kept: list[str] = []
        for i in order:
            kept.append(blocks[i])
            steps.append({"float_blocks": list(kept), "ap": ap_of(kept)})
            if fits(steps[-1]["ap"]):
                break
    for step in steps:
        step["drop"] = reference_ap - step["ap"]
    final = steps[-1]
    return {"reference_ap": reference_ap, "max_ap_drop": max_ap_drop, "budget_met": fits(final["ap"]),
            "float_blocks": final["float_blocks"], "final_ap": final["ap"], "steps": steps,
            "sensitivity": sensitivity, "evaluations": len(memo)}


def _blocks(prepared: onnx.ModelProto, candidates: Collection[str] | None) -> dict[str, list[str]]:
    """Quantizable nodes of the pre-processed graph by block, limited to ``candidates`` when given."""
    blocks = group_blocks(quantizable_nodes(prepared, QUANT_OP_TYPES))
    if candidates is None:
        return blocks
    missing = sorted(set(candidates) - set(blocks))
    if missing:
        raise ValueError(f"candidate_blocks not in the graph: {missing}; blocks are {list(blocks)}")
    return {b: nodes for b, nodes in blocks.items() if b in candidates}


def ap_budgeted_int8(fp32_path: str | Path, out_path: str | Path, *, selection: CalibrationSelection, spec: IOSpec,
                     evaluate: Callable[[Path], float], reference_ap: float, max_ap_drop: float = 0.01,
                     cache_dir: str | Path, method: str = "minmax", percentile: float = 99.99, batch_size: int = 8,
                     candidate_blocks: Collection[str] | None = None, full_int8: str | Path | None = None,
                     log: Callable[[str], None] | None = None, target: str = "tensorrt") -> dict[str, Any]:
    """INT8 within an AP budget; the final graph is written to ``out_path`` and a report returned.

    ``evaluate(onnx_path)`` returns mask AP (e.g. an ONNX Runtime runner over the labeled val
    split); ``reference_ap`` is the PyTorch FP32 AP and ``max_ap_drop`` the budget, all three in
    the same units (EvalResult's fractions make the default budget one AP point). The search
    costs 1 + (number of blocks) + (blocks kept float) evaluations, each after a re-quantization
    that hits the calibration cache. ``candidate_blocks`` limits the blocks the search may keep float (default: all);
    ``full_int8`` is an INT8 graph already quantized with the same settings, evaluated instead of
    being rebuilt. ``target`` is the INT8 graph searched (:data:`sskd_deploy.export.int8.TARGET_RULES`).
    """
    start = time.perf_counter()
    common: dict[str, Any] = {"selection": selection, "spec": spec, "method": method, "percentile": percentile,
                              "cache_dir": cache_dir, "batch_size": batch_size, "target": target}
    with tempfile.TemporaryDirectory(prefix="sskd-mixed-") as tmp:
        blocks = _blocks(prepare_for_quantization(fp32_path, Path(tmp) / "prepared.onnx"), candidate_blocks)

        def evaluate_float(float_blocks: frozenset[str]) -> float:
            candidate = Path(tmp) / "candidate.onnx"
            if float_blocks or full_int8 is None:
                quantize_int8(fp32_path, candidate, exclude_nodes=[n for b in float_blocks for n in blocks[b]],
                              **common)
            ap = evaluate(candidate if float_blocks or full_int8 is None else Path(full_int8))
            if log is not None:
                log(f"mixed precision: float blocks {sorted(float_blocks) or 'none'} -> AP {ap}")
            return ap

        search = greedy_search(list(blocks), evaluate_float, reference_ap=reference_ap, max_ap_drop=max_ap_drop)
    # Rebuilding the chosen graph (cache hit, seconds) is cheaper than keeping every candidate on disk.
    excluded = [n for b in search["float_blocks"] for n in blocks[b]]
    final = quantize_int8(fp32_path, out_path, exclude_nodes=excluded, **common)
    for entry in search["sensitivity"]:
        entry["nodes"] = len(blocks[entry["block"]])
    return {**search, "blocks": {b: len(nodes) for b, nodes in blocks.items()}, "final_path": str(out_path),
            "final": final, "wall_s": round(time.perf_counter() - start, 3)}
