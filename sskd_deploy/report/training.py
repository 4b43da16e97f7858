"""The training section: mask AP per stage, next to the paper's reference rows, and the curves.

The paper's rows (METHOD.md section 5: Cityscapes and ADE20K, 10% labels, mask AP / AP50 in
points) are the yardstick a reader holds the run against. On the synthetic CPU demo only the
order of the stages can be compared; the page says so rather than leaving the reader to guess.
"""

from __future__ import annotations

from typing import Any

from sskd_deploy.report.curves import curve_parts
from sskd_deploy.report.html import DASH, Markup, Section, fmt, missing, number, para, section, table, tag
from sskd_deploy.report.runfiles import RunFiles, mapping

DEFAULT_STAGES = ("teacher_1a", "teacher_1b", "student_2", "student_3", "supervised")

# (paper row, the stage of ours that trains the same thing or None, Cityscapes (AP, AP50), ADE20K (AP, AP50))
PAPER_ROWS: tuple[tuple[str, str | None, tuple[float | None, float | None], tuple[float | None, float | None]],
                  ...] = (
    ("zero-shot teacher (568M)", None, (22.0, 42.3), (8.1, 18.2)),
    ("teacher, supervised fine-tune", "teacher_1a", (28.7, 53.4), (14.2, 23.5)),
    ("teacher, adapted (stage 1)", "teacher_1b", (30.5, 56.6), (15.2, 24.5)),
    ("student, zero-shot (pretrained whole; not in the paper)", None, (None, None), (None, None)),
    ("student, supervised only", "supervised", (21.1, 38.7), (13.9, 24.2)),
    ("student, Guided Distillation", None, (30.8, 52.9), (14.2, 23.8)),
    ("student after stage 2", "student_2", (32.2, 56.5), (16.1, 27.4)),
    ("student after stage 3", "student_3", (33.9, 58.7), (16.7, 28.0)),
)
LOSS_TERMS = ("loss", "sup", "semi", "pxl")


def _stage_table(order: list[str], stages: dict[str, Any]) -> Markup:
    rows = []
    for name in order:
        info = stages.get(name) if isinstance(stages.get(name), dict) else {}
        losses = info.get("final_losses") if isinstance(info.get("final_losses"), dict) else {}
        rows.append([name, info.get("role", DASH), fmt(info.get("steps"), 0), fmt(info.get("train_seconds"), 1),
                     fmt(info.get("ap"), 2, scale=100), fmt(info.get("ap50"), 2, scale=100),
                     *(fmt(losses.get(term), 3) for term in LOSS_TERMS)])
    headers = ["stage", "role", "steps", "train s", "AP", "AP50", "final J", "L_sup", "L_semi", "L_pxl"]
    return table(headers, rows, align="llrrrrrrrr", caption="Mask AP on val in points (x100); final losses "
                                                             "are the last logged window's means")


def _paper_table(stages: dict[str, Any]) -> Markup:
    rows = []
    first = stages.get("teacher_1a", {})
    for label, stage, city, ade in PAPER_ROWS:
        ours, where = (stages.get(stage, {}) if stage else {}), stage or DASH
        if label.startswith("zero-shot") and first.get("zero_shot_ap") is not None:
            # the Grounded-SAM2 teacher's starting weights, evaluated before stage 1a trains
            ours = {"ap": first["zero_shot_ap"], "ap50": first.get("zero_shot_ap50")}
            where = "teacher_1a, before training"
        elif label.startswith("student, zero-shot"):
            if stages.get("supervised", {}).get("zero_shot_ap") is None:
                continue  # the student started from an encoder or random weights: no such row
            ours = {"ap": stages["supervised"]["zero_shot_ap"], "ap50": stages["supervised"].get("zero_shot_ap50")}
            where = "supervised, before training"
        rows.append([label, where, fmt(ours.get("ap"), 2, scale=100), fmt(ours.get("ap50"), 2, scale=100),
                     fmt(city[0]), fmt(city[1]), fmt(ade[0]), fmt(ade[1])])
    headers = ["paper row", "our stage", "ours AP", "ours AP50", "Cityscapes AP", "Cityscapes AP50",
               "ADE20K AP", "ADE20K AP50"]
    return table(headers, rows, align="llrrrrrr", caption="This run beside the paper (10% labels, mask AP / AP50 "
                                                          "in points); rows without a stage of ours read \u2014")


def _ordering(stages: dict[str, Any]) -> Markup:
    """Stages ranked by AP, ours and the paper's (Cityscapes), in one line each."""
    ours = sorted(((number(s.get("ap")), n) for n, s in stages.items() if number(s.get("ap")) is not None),
                  reverse=True)
    paper = sorted(((city[0], stage) for _, stage, city, _ in PAPER_ROWS if stage), reverse=True)
    ranked = " > ".join(f"{name} ({100 * ap:.2f})" for ap, name in ours) or DASH
    expected = " > ".join(f"{name} ({ap:.1f})" for ap, name in paper)
    return (para(tag("strong", "Order by AP in this run: ") + ranked)
            + para(tag("strong", "Order in the paper (Cityscapes): ") + expected))


def _caveat(synthetic: bool) -> Markup:
    if synthetic:
        text = ("This run is the synthetic CPU demo: tiny models trained for minutes on generated shapes at "
                "192x256. Its absolute numbers are not comparable with the paper's Cityscapes / ADE20K results; "
                "only the ordering between stages is.")
    else:
        text = ("The paper's numbers are Cityscapes and ADE20K with 10% of the labels and the full-size models; "
                "compare absolute values only for the same dataset, split and model sizes.")
    return para(text, class_="warn")


def _truth_note(order: list[str], stages: dict[str, Any]) -> Markup | None:
    """A warning naming the stages that trained on the withheld truth (train.pseudo.source: truth), if any."""
    truth = [name for name in order if stages.get(name, {}).get("pseudo_labels") == "truth"]
    if not truth:
        return None
    return para(f"{', '.join(truth)} trained on the withheld ground truth of the unlabeled images in place of a "
                "teacher's pseudo-labels (train.pseudo.source: truth): a diagnostic of the ceiling at this budget, "
                "not a result of the method.", class_="warn")


def _stage_order(summary: dict[str, Any], stages: dict[str, Any]) -> list[str]:
    listed = [s for s in summary.get("order") or [] if isinstance(s, str)]
    return listed + [s for s in stages if s not in listed]


def training_section(*, run: RunFiles, synthetic: bool) -> Section:
    """Stage table, paper comparison, ordering and curves; notes where the run has no training output."""
    summary = run.json(run.layout.train_summary)
    parts: list[object] = [_caveat(synthetic)]
    if summary is None:
        parts.append(missing(run.layout.shown(run.layout.train_summary), "train"))
        order = [s for s in DEFAULT_STAGES if run.layout.stage_dir(s).is_dir()]
    else:
        stages = mapping(summary, "stages", where=run.layout.train_summary)
        stages = {k: v for k, v in stages.items() if isinstance(v, dict)}
        order = _stage_order(summary, stages)
        if (note := _truth_note(order, stages)) is not None:
            parts.append(note)
        parts += [tag("h3", "Per stage"), _stage_table(order, stages), tag("h3", "Against the paper"),
                  _paper_table(stages), _ordering(stages)]
    parts += [tag("h3", "Training curves"), *curve_parts(run, order)]
    return section("training", "Training: mask AP per stage", parts)
