"""From network outputs to instances to scores: the evaluation layer.

- :mod:`~sskd_deploy.evaluation.postprocess`: the deploy graph's three outputs -> instances at the
  original image size (the same code serves local and Triton predictions).
- :mod:`~sskd_deploy.evaluation.metrics`: COCO mask AP through pycocotools (:func:`evaluate_instances`,
  :class:`EvalResult`).
- :mod:`~sskd_deploy.evaluation.prediction`: a dataset through any runner-like callable, then scored.

May import the base layer and ``data``; no torch (runners hand in numpy arrays).
"""

from __future__ import annotations

from sskd_deploy.evaluation.metrics import EvalResult, evaluate_coco, evaluate_instances, format_eval_table

__all__ = ["EvalResult", "evaluate_coco", "evaluate_instances", "format_eval_table"]
