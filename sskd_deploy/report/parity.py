"""The export section: what the artifact holds and how each compiled form scores against PyTorch.

Rows come from the parity gate's own reports (``export/parity.json`` and, when the model was
served, ``export/parity_triton.json``); the report re-judges nothing, it shows the gate's verdict
beside the numbers it was reached from. Forms that could not run here (TensorRT without a GPU)
are listed as skipped with the reason, so their absence is never silent.
"""

from __future__ import annotations

from typing import Any

from sskd_deploy.config.layout import PARITY, PARITY_TRITON
from sskd_deploy.report.html import DASH, Section, badge, fmt, missing, note, section, table, tag
from sskd_deploy.report.runfiles import RunFiles, mapping, objects

BACKEND_ORDER = ("torch", "onnxruntime", "tensorrt", "triton")
PRECISION_ORDER = ("fp32", "fp16", "int8", "mixed")


def _rank(order: tuple[str, ...], value: object) -> int:
    return order.index(value) if value in order else len(order)


def _row_key(row: dict[str, Any]) -> tuple[int, int, int]:
    # The reference first, then precision by precision, TensorRT after ONNX Runtime, the server last.
    return (0 if "ok" not in row else 1, _rank(BACKEND_ORDER, row.get("backend")),
            _rank(PRECISION_ORDER, row.get("precision")))


def _points(doc: dict[str, Any]) -> float:
    """Scale to AP points: the gate writes points ("ap_unit"), an older report may hold fractions."""
    return 100.0 if str(doc.get("ap_unit", "points")).startswith("fraction") else 1.0


def _parity_rows(doc: dict[str, Any], *, where: Any, skip_reference: bool) -> list[list[object]]:
    scale, reference = _points(doc), doc.get("reference", DASH)
    rows = []
    for row in objects(doc, "rows", where=where):
        if skip_reference and "ok" not in row:
            continue
        tensors = row.get("tensors") if isinstance(row.get("tensors"), dict) else {}
        decisions = row.get("decisions") if isinstance(row.get("decisions"), dict) else {}
        judged = "ok" in row
        status = badge(bool(row["ok"])) if judged else badge(None, text="reference")
        rows.append((row, [row.get("runner", DASH), row.get("backend", DASH), row.get("precision", DASH),
                           row.get("provider", DASH), fmt(row.get("ap"), 2, scale=scale),
                           fmt(row.get("ap50"), 2, scale=scale), fmt(row.get("ap_drop"), 3, scale=scale),
                           reference if judged else DASH, fmt(decisions.get("agreement"), 1, scale=100),
                           fmt(tensors.get("label_agreement"), 1, scale=100), status]))
    return [cells for _, cells in sorted(rows, key=lambda item: _row_key(item[0]))]


def _skipped(docs: list[tuple[dict[str, Any], Any]], manifest: dict[str, Any] | None) -> list[tuple[str, str]]:
    found = [(str(s.get("runner", DASH)), str(s.get("reason", DASH)))
             for doc, where in docs for s in objects(doc, "skipped", where=where)]
    trt = (manifest or {}).get("tensorrt")
    if isinstance(trt, dict) and trt.get("skipped") and not any("tensorrt" in r for r, _ in found):
        found.append(("tensorrt", str(trt["skipped"])))
    return found


def _parity_parts(run: RunFiles, manifest: dict[str, Any] | None) -> list[object]:
    layout = run.layout
    gate, through_triton = layout.export_report(PARITY), layout.export_report(PARITY_TRITON)
    parity = run.json(gate)
    if parity is None:
        return [missing(layout.shown(gate), f"verify {layout.export_hint}")]
    docs = [(parity, gate)]
    rows = _parity_rows(parity, where=docs[0][1], skip_reference=False)
    served = run.json(through_triton)
    if served is not None:
        docs.append((served, through_triton))
        rows += _parity_rows(served, where=docs[1][1], skip_reference=True)
    skipped = _skipped(docs, manifest)
    rows += [[name, DASH, DASH, DASH, DASH, DASH, DASH, DASH, DASH, DASH, badge(None, text="skipped")]
             for name, _ in skipped]
    headers = ["runner", "backend", "precision", "provider", "AP", "AP50", "AP drop", "vs", "decisions %",
               "labels %", "gate"]
    caption = (f"{parity.get('split', DASH)} split, {parity.get('images', DASH)} images; AP in points; "
               "decisions: detections above 0.5 matched by label and mask IoU >= 0.5")
    parts: list[object] = [table(headers, rows, align="llllrrrlrrl", caption=caption)]
    if served is None:
        parts.append(missing(layout.shown(through_triton), f"verify {layout.export_hint} --triton HOST:PORT"))
    budgets = mapping(parity, "budgets", where=docs[0][1])
    if budgets:
        parts.append(note("budgets: " + ", ".join(f"{k} {v}" for k, v in sorted(budgets.items()))))
    parts += [note(tag("code", name) + f" skipped: {reason}") for name, reason in skipped]
    return parts


def _artifact_parts(manifest: dict[str, Any] | None, where: Any, shown: str) -> list[object]:
    if manifest is None:
        return [missing(shown, "export --int8")]
    rows = [[name, info.get("kind") or info.get("backend", DASH), info.get("precision", DASH),
             info.get("target", DASH), fmt(info.get("bytes"), 2, scale=1e-6)]
            for name, info in sorted(mapping(manifest, "files", where=where).items()) if isinstance(info, dict)]
    caption = (f"model {manifest.get('model', DASH)}, from {manifest.get('checkpoint_source', DASH)}, "
               f"exported in {fmt(manifest.get('export_seconds'), 1)} s")
    parts: list[object] = [table(["file", "kind / backend", "precision", "for", "MB"], rows, align="llllr",
                                 caption=caption)]
    return parts + _census_parts(mapping(manifest, "int8", where=where))


def _census_parts(int8: dict[str, Any]) -> list[object]:
    """Per INT8 graph: compute ops quantized in the graph, and the kernels ONNX Runtime runs (integer vs float)."""
    rows = []
    for name, quant in (int8.get("graphs") or {}).items():
        if not isinstance(quant, dict) or not isinstance(quant.get("census"), dict):
            continue
        census, runtime = quant["census"], quant.get("runtime_census") or {}
        ops = ", ".join(f"{op} {v.get('quantized')}/{v.get('quantized', 0) + v.get('float', 0)}"
                        for op, v in (census.get("ops") or {}).items() if isinstance(v, dict))
        ran = lambda kind: ", ".join(f"{op} {n}" for op, n in (runtime.get(kind) or {}).items()) or DASH  # noqa: E731
        rows.append([name, quant.get("target", DASH), ops or DASH, fmt(census.get("quantize_linear"), 0),
                     fmt(census.get("dequantize_linear"), 0), ran("integer"), ran("float"),
                     fmt(runtime.get("integer_fraction"), 0, scale=100, suffix="%")])
    if not rows:
        return []
    return [table(["graph", "for", "quantized in graph", "Q", "DQ", "ORT integer kernels", "ORT float kernels",
                   "integer"], rows, align="llllrrlll",
                  caption="Node census: a float Conv/MatMul left between Q/DQ pairs is time lost")]


def export_section(*, run: RunFiles) -> Section:
    """Artifact files, then the parity table (FP32, FP16, INT8, mixed, TensorRT, Triton)."""
    where = run.layout.export_manifest
    manifest = run.json(where)
    parts = [tag("h3", "Artifact"), *_artifact_parts(manifest, where, run.layout.shown(where)),
             tag("h3", "Parity against PyTorch"), *_parity_parts(run, manifest)]
    return section("export", "Export and parity", parts)
