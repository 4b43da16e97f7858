"""The parity gate: the same preprocessed inputs through every runner, compared three ways.

1. Tensor level: max and mean |score difference|, label agreement over the K slots, and the
   fraction of mask logits on the same side of 0 (what decides a mask pixel).
2. Decision level: detections above a score threshold matched greedily by mask IoU; agreement is
   the fraction of reference detections with a partner of the same label, plus the mean IoU of
   the matched pairs.
3. Mask AP on a labeled split, computed exactly like the training-time validation.

The reference (PyTorch FP32) runs once per batch and every other runner is compared with it
batch by batch, so memory stays flat however large the split. Budgets depend on precision:
FP32 graphs must reproduce the reference (|delta AP| and max |score diff|), FP16 and INT8 graphs may lose a
bounded amount of AP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sskd_deploy.config.export import BudgetConfig
from sskd_deploy.data.image_io import read_image
from sskd_deploy.data.records import Dataset
from sskd_deploy.evaluation import evaluate_instances
from sskd_deploy.evaluation.postprocess import postprocess_batch
from sskd_deploy.preprocess import preprocess_batch
from sskd_deploy.runtime.base import Outputs, Runner
from sskd_deploy.structures import Instances


@dataclass
class TensorStats:
    """Running tensor-level differences of one runner against the reference."""

    max_score: float = 0.0
    max_sorted_score: float = 0.0
    sum_score: float = 0.0
    slots: int = 0
    same_label: int = 0
    max_mask_logit: float = 0.0
    same_sign: int = 0
    mask_values: int = 0

    def add(self, ref: Outputs, got: Outputs) -> None:
        score_diff = np.abs(ref[0].astype(np.float64) - got[0])
        self.max_score = max(self.max_score, float(score_diff.max()))
        # near-tied candidates may swap slots under reduced precision: compare the sorted scores too
        sorted_diff = np.abs(np.sort(ref[0], axis=1).astype(np.float64) - np.sort(got[0], axis=1))
        self.max_sorted_score = max(self.max_sorted_score, float(sorted_diff.max()))
        self.sum_score += float(score_diff.sum())
        self.slots += score_diff.size
        self.same_label += int((ref[1] == got[1]).sum())
        self.max_mask_logit = max(self.max_mask_logit, float(np.abs(ref[2] - got[2]).max()))
        self.same_sign += int(((ref[2] > 0) == (got[2] > 0)).sum())
        self.mask_values += ref[2].size

    def to_dict(self) -> dict[str, float]:
        return {
            "max_abs_score_diff": self.max_score,
            "max_abs_sorted_score_diff": self.max_sorted_score,
            "mean_abs_score_diff": self.sum_score / max(self.slots, 1),
            "label_agreement": self.same_label / max(self.slots, 1),
            "max_abs_mask_logit_diff": self.max_mask_logit,
            "mask_sign_agreement": self.same_sign / max(self.mask_values, 1),
        }


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(len(a), len(b))`` of bool mask stacks ``(N, H, W)`` and ``(M, H, W)``."""
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


@dataclass
class DecisionStats:
    """Detections above ``score_threshold``, reference vs runner, matched by mask IoU >= ``iou_threshold``."""

    score_threshold: float = 0.5
    iou_threshold: float = 0.5
    reference: int = 0
    candidate: int = 0
    agreed: int = 0
    ious: list[float] = field(default_factory=list)

    def add(self, ref: Instances, got: Instances) -> None:
        keep_r, keep_g = ref.scores > self.score_threshold, got.scores > self.score_threshold
        self.reference += int(keep_r.sum())
        self.candidate += int(keep_g.sum())
        if not keep_r.any() or not keep_g.any():
            return
        iou = mask_iou(ref.masks[keep_r], got.masks[keep_g])
        same = ref.labels[keep_r][:, None] == got.labels[keep_g][None, :]
        iou = np.where(same, iou, 0.0)
        # greedy, highest IoU first: a detection pairs with at most one partner
        for _ in range(min(iou.shape)):
            i, j = np.unravel_index(int(iou.argmax()), iou.shape)
            if iou[i, j] < self.iou_threshold:
                break
            self.agreed += 1
            self.ious.append(float(iou[i, j]))
            iou[i, :], iou[:, j] = -1.0, -1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "score_threshold": self.score_threshold, "reference_detections": self.reference,
            "runner_detections": self.candidate,
            "agreement": self.agreed / self.reference if self.reference else (1.0 if not self.candidate else 0.0),
            "mean_matched_iou": float(np.mean(self.ious)) if self.ious else None,
        }


def _budget_checks(precision: str, ap_delta: float | None, tensors: dict[str, float],
                   budgets: BudgetConfig) -> list[dict[str, Any]]:
    """``ap_delta`` = reference AP - runner AP, in AP points."""
    checks = []
    if precision == "fp32":
        checks.append({"name": "|delta AP|", "value": abs(ap_delta or 0.0), "limit": budgets.fp32_ap})
        checks.append({"name": "max |score diff|", "value": tensors["max_abs_score_diff"],
                       "limit": budgets.fp32_score})
    else:
        limit = budgets.fp16_ap if precision == "fp16" else budgets.int8_ap
        checks.append({"name": "AP drop", "value": ap_delta or 0.0, "limit": limit})
    for check in checks:
        check["ok"] = bool(check["value"] <= check["limit"])
    return checks


def _points(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def compare_runners(
    reference: Runner,
    others: Mapping[str, Runner],
    dataset: Dataset,
    *,
    budgets: BudgetConfig,
    batch_size: int = 8,
    decision_threshold: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
    same_graph: bool = False,
) -> dict[str, Any]:
    """Feed ``dataset`` (labeled) through ``reference`` and ``others``; return the parity report dict.

    ``same_graph``: the others run the reference's own graph elsewhere (a server), so every row is
    held to the FP32 tensor-level budgets whatever the graph's precision.
    """
    runners = {"reference": reference, **others}
    size = min(batch_size, *(r.max_batch for r in runners.values()))
    predictions: dict[str, dict[int, Instances]] = {name: {} for name in runners}
    tensors = {name: TensorStats() for name in others}
    decisions = {name: DecisionStats(score_threshold=decision_threshold) for name in others}
    records = dataset.records
    for start in range(0, len(records), size):
        chunk = records[start : start + size]
        batch, infos = preprocess_batch([read_image(r.path) for r in chunk], reference.spec.input_size)
        outputs = {name: runner.run(batch) for name, runner in runners.items()}
        instances = {name: postprocess_batch(*out, infos) for name, out in outputs.items()}
        for name in runners:
            predictions[name].update({r.image_id: inst for r, inst in zip(chunk, instances[name])})
        for name in others:
            tensors[name].add(outputs["reference"], outputs[name])
            for ref, got in zip(instances["reference"], instances[name]):
                decisions[name].add(ref, got)
        if progress is not None:
            progress(start + len(chunk), len(records))
    return _report(runners, predictions, tensors, decisions, dataset, budgets, same_graph)


def _report(runners, predictions, tensors, decisions, dataset, budgets, same_graph=False) -> dict[str, Any]:
    results = {name: evaluate_instances(dataset, preds) for name, preds in predictions.items()}
    ref_ap = _points(results["reference"].ap)
    rows = []
    for name, runner in runners.items():
        ap, ap50 = _points(results[name].ap), _points(results[name].ap50)
        row: dict[str, Any] = {"runner": runner.info.name, **runner.info.to_dict(), "ap": ap, "ap50": ap50}
        if name != "reference":
            delta = None if ap is None or ref_ap is None else ref_ap - ap
            row.update(ap_drop=delta, tensors=tensors[name].to_dict(), decisions=decisions[name].to_dict())
            row["checks"] = _budget_checks("fp32" if same_graph else runner.info.precision, delta, row["tensors"],
                                           budgets)
            row["ok"] = all(c["ok"] for c in row["checks"])
        rows.append(row)
    return {
        "format": "sskd-deploy/parity", "version": 1, "split": dataset.name, "images": len(dataset.records),
        "reference": runners["reference"].info.name, "ap_unit": "points (percent)",
        "budgets": budgets.model_dump(), "rows": rows, "ok": all(r.get("ok", True) for r in rows),
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def parity_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table (what a person reads; the JSON is what tools read)."""
    lines = [
        f"# Parity on `{report['split']}` ({report['images']} images), reference `{report['reference']}`", "",
        "| runner | precision | provider | AP | AP50 | AP drop | max abs score diff | same, sorted | "
        "label agreement | mask sign agreement | decision agreement | mean matched IoU | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        t, d = row.get("tensors", {}), row.get("decisions", {})
        verdict = "reference" if "ok" not in row else ("pass" if row["ok"] else "FAIL: " + ", ".join(
            f"{c['name']} {c['value']:.4g} > {c['limit']:.4g}" for c in row["checks"] if not c["ok"]))
        lines.append(
            f"| {row['runner']} | {row['precision']} | {row['provider'] or row['backend']} | {_fmt(row['ap'])} | "
            f"{_fmt(row['ap50'])} | {_fmt(row.get('ap_drop'), 3)} | {_fmt(t.get('max_abs_score_diff'), 6)} | "
            f"{_fmt(t.get('max_abs_sorted_score_diff'), 6)} | {_fmt(t.get('label_agreement'), 4)} | {_fmt(t.get('mask_sign_agreement'), 4)} | "
            f"{_fmt(d.get('agreement'), 3)} | {_fmt(d.get('mean_matched_iou'), 3)} | {verdict} |"
        )
    for skipped in report.get("skipped", []):
        lines.append(f"\nSkipped `{skipped['runner']}`: {skipped['reason']}")
    budgets = ", ".join(f"{k} {v}" for k, v in report["budgets"].items())
    lines += ["", f"AP in points; budgets: {budgets}. Overall: {'pass' if report['ok'] else 'FAIL'}.", ""]
    return "\n".join(lines)
