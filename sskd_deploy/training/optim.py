"""Optimizer and learning-rate schedule of METHOD.md section 3: AdamW, backbone lr multiplier,
linear warm-up then poly decay.

The schedule is a pure function of the step and the config (:func:`lr_lambda`), so a resumed run
recomputes exactly the learning rates an uninterrupted one would have used.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR

BACKBONE_GROUP = "encoder"
NO_DECAY = ".no_decay"  # suffix of a group without weight decay


class OptimSettings(Protocol):
    """The fields of a schedule the optimizer and lr schedule read
    (:class:`~sskd_deploy.training.loop.LoopConfig` has them; this module never imports the loop)."""

    steps: int
    lr: float
    weight_decay: float
    backbone_lr_mult: float
    warmup_steps: int
    poly_power: float
    decay_1d: bool


def lr_lambda(step: int, cfg: OptimSettings) -> float:
    """Multiplier of the base lr for optimizer step ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps (the first step
    already moves the weights). Then poly: ``(1 - t) ** poly_power`` with ``t`` going from 0 at the
    end of the warm-up to 1 at ``cfg.steps``.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return (1.0 - progress) ** cfg.poly_power


def complete_groups(
    param_groups: dict[str, list[nn.Parameter]] | None, model: nn.Module, extra: dict[str, nn.Module]
) -> dict[str, list[nn.Parameter]]:
    """``param_groups`` (default ``{"model": all of model}``) plus ``"extra"``: extra modules' unlisted params.

    A trainable model parameter in no group is an error: it would get gradients but never move.
    """
    groups = dict(param_groups) if param_groups is not None else {"model": list(model.parameters())}
    listed = {id(p) for params in groups.values() for p in params}
    orphans = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in listed]
    if orphans:
        raise ValueError(f"trainable parameters in no param group: {', '.join(orphans[:5])}"
                         f"{' ...' if len(orphans) > 5 else ''}; list them or set requires_grad=False")
    unlisted = [p for m in extra.values() for p in m.parameters() if p.requires_grad and id(p) not in listed]
    if unlisted:
        groups["extra"] = groups.get("extra", []) + unlisted
    return groups


def build_optimizer(param_groups: dict[str, list[nn.Parameter]], cfg: OptimSettings) -> AdamW:
    """AdamW with one param group per name (the name is kept in the group under ``"name"``).

    The ``"encoder"`` group gets ``lr * backbone_lr_mult``, every other group ``lr``. With
    ``cfg.decay_1d=False`` (default) 1-D parameters (biases, norm scales) go to a sibling group
    ``"<name>.no_decay"`` without weight decay, as Mask2Former trains them. A group the caller
    already names ``"<name>.no_decay"`` (embeddings: positions, tokens, queries) gets no weight
    decay whatever its shape, and ``<name>``'s lr. Parameters that do not require grad are dropped;
    a parameter listed twice is an error.
    """
    groups, seen = [], set()
    for name, params in param_groups.items():
        params = [p for p in params if p.requires_grad]
        duplicated = [p for p in params if id(p) in seen]
        if duplicated:
            raise ValueError(f"param group {name!r} repeats {len(duplicated)} parameter(s) of another group")
        seen.update(id(p) for p in params)
        base = name.removesuffix(NO_DECAY)
        lr = cfg.lr * (cfg.backbone_lr_mult if base == BACKBONE_GROUP else 1.0)
        exempt = name.endswith(NO_DECAY)
        decay = [p for p in params if not exempt and (cfg.decay_1d or p.ndim > 1)]
        no_decay = [p for p in params if exempt or (not cfg.decay_1d and p.ndim <= 1)]
        if decay:
            groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": cfg.weight_decay})
        if no_decay:
            groups.append({"name": f"{base}{NO_DECAY}", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    if not groups:
        raise ValueError("no trainable parameters: every param group is empty or frozen")
    return AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimSettings) -> LambdaLR:
    """Every group follows :func:`lr_lambda` relative to its own base lr."""
    return LambdaLR(optimizer, lambda step: lr_lambda(step, cfg))


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current lr of each named group: ``{"encoder": ..., "decoder": ...}`` (no-decay twins merged)."""
    return {g["name"].removesuffix(NO_DECAY): g["lr"] for g in optimizer.param_groups}
