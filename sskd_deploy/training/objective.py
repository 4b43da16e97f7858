"""The one SSKD objective as a training step: J = L_sup + lambda_semi L_semi + lambda_pxl L_pxl.

Every stage uses :func:`make_step` with its own terms switched on: stage 1a is L_sup + L_pxl on
labeled data, 1b and 2 the full J on labeled + pseudo-labeled pairs, stage 3 and the supervised
baseline L_sup alone. Labeled and pseudo-labeled images share one forward pass; the strong view
only goes through the encoder, without gradient (the stop-gradient branch of L_pxl).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sskd_deploy.models.criterion import SetCriterion
from sskd_deploy.training.contrastive import PixelContrast, temperature_at


LAST_LAYER_TERMS = ("loss_class", "loss_mask", "loss_dice")
OPTIONAL_TERMS = ("loss_semantic",)


@dataclass(frozen=True)
class ObjectiveWeights:
    lambda_semi: float = 1.0
    lambda_pxl: float = 0.1
    temperature_start: float = 0.3
    temperature_end: float = 0.07
    temperature_schedule: str = "anneal"


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def slice_outputs(outputs: dict[str, Any], rows: slice) -> dict[str, Any]:
    """The model outputs of the images ``rows`` of the batch (aux outputs included)."""
    sliced = {k: outputs[k][rows] for k in ("pred_logits", "pred_masks")}
    if "aux_semantic" in outputs:
        sliced["aux_semantic"] = [level[rows] for level in outputs["aux_semantic"]]
    sliced["aux_outputs"] = [{k: aux[k][rows] for k in ("pred_logits", "pred_masks")} for aux in outputs["aux_outputs"]]
    if "query_groups" in outputs:
        sliced["query_groups"] = outputs["query_groups"]
    return sliced


def first_group(outputs: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """``(pred_logits, pred_masks)`` of the first query group: the queries inference uses (Group DETR)."""
    count = outputs["pred_logits"].shape[1] // int(outputs.get("query_groups", 1))
    return outputs["pred_logits"][:, :count], outputs["pred_masks"][:, :count]


def ids_on_grid(instance_ids: Tensor, grid: tuple[int, int], patch: int) -> Tensor:
    """Instance id at the centre pixel of each ``patch`` x ``patch`` cell: (B, H, W) -> (B, gh, gw).

    The grid may cover more than the image (the encoder pads to whole patches): cells whose centre
    falls outside it get -1 (unknown), like padding.
    """
    height, width = instance_ids.shape[-2:]
    pad_h, pad_w = max(0, grid[0] * patch - height), max(0, grid[1] * patch - width)
    if pad_h or pad_w:
        instance_ids = F.pad(instance_ids, (0, pad_w, 0, pad_h), value=-1)
    offset = patch // 2
    return instance_ids[:, offset : offset + grid[0] * patch : patch, offset : offset + grid[1] * patch : patch]


def add_pixel_term(terms: dict, loss: Tensor, loss_pxl: Tensor, diagnostics: dict[str, float],
                   weights: ObjectiveWeights) -> Tensor:
    """Record L_pxl and its diagnostics in ``terms``; return ``loss + lambda_pxl * L_pxl``."""
    terms["pxl"] = loss_pxl
    terms.update({k: torch.tensor(v) for k, v in diagnostics.items()})
    return loss + weights.lambda_pxl * loss_pxl


def make_step(
    *, criterion: SetCriterion, pxl: PixelContrast | None, weights: ObjectiveWeights, total_steps: int,
    generator_seed: int = 0,
) -> Callable[[nn.Module, dict, int], dict[str, Tensor]]:
    """A ``step_fn(model, batch, step) -> {"loss", "sup", "sup_class", "sup_mask", "sup_dice", ["semi"],
    ["pxl", diagnostics...]}`` (``sup_*``: the final layer's weighted terms, for the log only).

    ``batch`` is :func:`~sskd_deploy.training.data.collate_samples` output: either one labeled batch
    or ``{"l": labeled, "u": pseudo-labeled}``.
    """

    def step_fn(model: nn.Module, batch: dict, step: int) -> dict[str, Tensor]:
        parts = [batch["l"], batch["u"]] if "l" in batch else [batch]
        net = unwrap(model)
        weak = torch.cat([p["weak"] for p in parts])
        outputs = model(net.normalize(weak))
        n_labeled = parts[0]["weak"].shape[0]
        sup = criterion(slice_outputs(outputs, slice(0, n_labeled)), parts[0]["targets"])
        terms = {"sup": sup["loss"]}
        # the last layer's three terms, detached: which of class / mask / dice is still high
        terms.update({f"sup_{k.removeprefix('loss_')}": sup[k].detach() for k in LAST_LAYER_TERMS + OPTIONAL_TERMS
                      if k in sup})
        loss = terms["sup"]
        if len(parts) == 2 and weights.lambda_semi > 0:
            terms["semi"] = criterion(slice_outputs(outputs, slice(n_labeled, None)), parts[1]["targets"])["loss"]
            loss = loss + weights.lambda_semi * terms["semi"]
        if pxl is not None and weights.lambda_pxl > 0:
            loss_pxl, diagnostics = _pixel_term(net, pxl, parts, outputs, step, total_steps, weights, generator_seed)
            loss = add_pixel_term(terms, loss, loss_pxl, diagnostics, weights)
        terms["loss"] = loss
        return terms

    return step_fn


def _pixel_term(net, pxl, parts, outputs, step, total_steps, weights, seed) -> tuple[Tensor, dict[str, float]]:
    strong = torch.cat([p["strong"] for p in parts])
    with torch.no_grad():  # the strong branch is a fixed target: no gradient through it
        feat_strong = net.encoder(net.normalize(strong))[-1]
    feat_weak = outputs["features"]
    ids = ids_on_grid(torch.cat([p["instance_ids"] for p in parts]), tuple(feat_weak.shape[-2:]),
                      net.encoder.feature_stride)
    temperature = temperature_at(
        step, total_steps, start=weights.temperature_start, end=weights.temperature_end,
        schedule=weights.temperature_schedule,
    )
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    pred_logits, pred_masks = first_group(outputs)  # the sampler's softmax is over one group's queries
    return pxl(
        feat_weak, feat_strong, pred_logits, pred_masks, temperature=temperature,
        instance_ids=ids, generator=generator,
    )
