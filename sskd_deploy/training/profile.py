"""Where a training step's time goes: data and augmentation, forward, matching, loss, backward, optimizer.

``profile_steps`` runs real supervised steps of a run's student (or teacher) on the run's labeled
data, with the run's recipe (criterion, optimizer groups, gradient clipping), and times each phase
with wall clocks (CUDA phases synchronised). Matching is timed inside the loss by wrapping the
matcher, so "loss" is the criterion without it. The first ``warmup`` steps are not counted
(allocator and kernel caches warm up there).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from sskd_deploy.models.maskformer import build_model
from sskd_deploy.training.context import TrainContext
from sskd_deploy.training.data import collate_samples
from sskd_deploy.training.loop import LoopConfig, to_device
from sskd_deploy.training.optim import build_optimizer, complete_groups

PHASES = ("data", "forward", "matching", "loss", "backward", "optimizer")


@dataclass
class StepProfile:
    """Mean milliseconds per step of each phase over ``steps`` timed steps."""

    role: str
    batch_size: int
    steps: int
    threads: int
    device: str
    ms: dict[str, float] = field(default_factory=dict)

    @property
    def total_ms(self) -> float:
        return sum(self.ms.values())

    def to_dict(self) -> dict:
        return {"role": self.role, "batch_size": self.batch_size, "steps": self.steps, "threads": self.threads,
                "device": self.device, "ms": {k: round(v, 2) for k, v in self.ms.items()},
                "total_ms": round(self.total_ms, 2), "images_per_second": round(1000 * self.batch_size / self.total_ms, 2)}


class _Clock:
    """Accumulates wall time per phase; ``sync`` makes CUDA work finish inside its phase."""

    def __init__(self, device: torch.device | str) -> None:
        self.totals = dict.fromkeys(PHASES, 0.0)
        cuda = torch.device(device).type == "cuda"
        self.sync: Callable[[], None] = torch.cuda.synchronize if cuda else (lambda: None)
        self.counting = False

    def timed(self, phase: str, fn: Callable, *args, **kwargs):
        self.sync()
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.sync()
        if self.counting:
            self.totals[phase] += time.perf_counter() - start
        return result


def profile_steps(ctx: TrainContext, *, role: str = "student", steps: int = 10, warmup: int = 2,
                  batch_size: int | None = None) -> StepProfile:
    """Time ``warmup + steps`` supervised steps of ``role`` on the labeled split (see the module docstring)."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got {steps}, {warmup}")
    schedule = ctx.train.supervised_schedule()
    batch = batch_size or schedule.batch_size
    model = build_model(ctx.model_config(role)).to(ctx.device).train()
    samples = ctx.samples(ctx.data.labeled, 51, strong=False)
    criterion = ctx.criterion()
    clock = _Clock(ctx.device)
    matcher_forward = criterion.matcher.forward
    criterion.matcher.forward = lambda *a, **k: clock.timed("matching", matcher_forward, *a, **k)
    cfg = LoopConfig(steps=steps + warmup, batch_size=batch, lr=schedule.lr, weight_decay=ctx.train.optim.weight_decay,
                     backbone_lr_mult=ctx.train.backbone_lr_mult_for(role), grad_clip=ctx.train.optim.grad_clip)
    groups = model.parameter_groups(decay_embeddings=ctx.train.optim.decay_embeddings)
    optimizer = build_optimizer(complete_groups(groups, model, {}), cfg)
    params = [p for g in optimizer.param_groups for p in g["params"]]

    def optimize() -> None:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    matching_before = 0.0
    for step in range(warmup + steps):
        clock.counting = step >= warmup
        indices = [(step * batch + i) % len(samples) for i in range(batch)]
        data = clock.timed("data", lambda: to_device(collate_samples([samples[i] for i in indices]), ctx.device))
        outputs = clock.timed("forward", lambda: model(model.normalize(data["weak"])))
        matching_before = clock.totals["matching"]
        loss = clock.timed("loss", lambda: criterion(outputs, data["targets"])["loss"])
        clock.totals["loss"] -= clock.totals["matching"] - matching_before  # matching is its own phase
        clock.timed("backward", loss.backward)
        clock.timed("optimizer", optimize)
    return StepProfile(role=role, batch_size=batch, steps=steps, threads=torch.get_num_threads(),
                       device=str(ctx.device), ms={k: 1000 * v / steps for k, v in clock.totals.items()})
