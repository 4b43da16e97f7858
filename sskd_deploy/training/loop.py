"""The shared training loop: everything around a stage's model, data and loss.

The recipe supplies ``step_fn(model, batch, step) -> {"loss": Tensor, <term>: Tensor | float}``
(``step`` is the 0-based index of the step being computed; ``model`` may be the DDP wrapper, so
reach the network through ``model.module`` when present). The loop owns the rest: seeding, a
sharded deterministic data order, AMP on CUDA, the NaN/inf guard, clipping, AdamW with warm-up +
poly, logging, atomic checkpoints and exact resume.

Dataset contract: ``len(dataset)`` items; ``dataset[i]`` must draw its randomness only from
``(its seed, epoch, i)``; if it has ``set_epoch(epoch)`` the loop calls it before each epoch's
loader is created (workers are forked afterwards, so they see it too). The epoch order comes from
``(cfg.seed, epoch)``; ``cfg.batch_size`` is the global batch, split over ranks (see
:mod:`sskd_deploy.training.distributed`). Step counts in files are completed optimizer steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from sskd_deploy.config.layout import METRICS
from sskd_deploy.errors import ConfigError
from sskd_deploy.training.distributed import (
    ShardedBatchSampler,
    StopRequest,
    any_flag,
    average_gradients,
    barrier,
    rank_and_world,
    worker_init,
    wrap_ddp,
)
from sskd_deploy.training.logging import MetricsLog, ProgressBar, StepWindow
from sskd_deploy.training.optim import build_optimizer, build_scheduler, complete_groups, group_lrs, lr_lambda
from sskd_deploy.training.state import (
    STATE_FILE,
    TrainingDivergedError,
    TrainingStateError,
    capture_rng,
    check_compatible,
    gather_state,
    load_state,
    restore_modules,
    restore_rng,
    save_state,
    seed_everything,
)

__all__ = ["LoopConfig", "LoopResult", "TrainingDivergedError", "TrainingStateError", "train_loop"]

StepFn = Callable[[nn.Module, Any, int], dict[str, Any]]
# evaluate(model) -> {"val_ap": ..., ...}: called on rank 0 every ``eval_every`` steps, model in eval mode
EvalFn = Callable[[nn.Module], dict[str, float]]


@dataclass(frozen=True)
class LoopConfig:
    """Optimisation settings (METHOD.md section 3 defaults). ``grad_clip`` is a max global norm (0: off);
    ``amp`` applies on CUDA only; ``decay_1d=False`` exempts biases and norm scales from weight decay."""

    steps: int
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.05
    backbone_lr_mult: float = 0.1
    warmup_steps: int = 50
    poly_power: float = 0.9
    grad_clip: float = 1.0
    amp: bool = True
    amp_dtype: str = "float16"
    decay_1d: bool = False
    find_unused_parameters: bool = False
    checkpoint_every: int = 100
    log_every: int = 10
    eval_every: int = 0
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        checks = {
            "steps must be >= 1": self.steps >= 1, "batch_size must be >= 1": self.batch_size >= 1,
            "lr must be > 0": self.lr > 0, "weight_decay must be >= 0": self.weight_decay >= 0,
            "backbone_lr_mult must be >= 0": self.backbone_lr_mult >= 0,
            "warmup_steps must be >= 0": self.warmup_steps >= 0,
            "poly_power must be >= 0": self.poly_power >= 0, "grad_clip must be >= 0 (0 disables)": self.grad_clip >= 0,
            "amp_dtype must be float16 or bfloat16": self.amp_dtype in ("float16", "bfloat16"),
            "checkpoint_every must be >= 1": self.checkpoint_every >= 1, "log_every must be >= 1": self.log_every >= 1,
            "eval_every must be >= 0 (0 disables)": self.eval_every >= 0,
            "num_workers must be >= 0": self.num_workers >= 0,
        }
        problems = [f"loop config: {message}" for message, ok in checks.items() if not ok]
        if problems:
            raise ConfigError(None, problems)


@dataclass(frozen=True)
class LoopResult:
    steps: int
    resumed_from: int | None
    final_losses: dict[str, float]
    seconds: float


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor (inside dicts, lists, tuples) moved to ``device``; other leaves as they are."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def train_loop(
    *, out_dir: Path, model: nn.Module, step_fn: StepFn, dataset: TorchDataset, collate: Callable | None,
    cfg: LoopConfig, param_groups: dict[str, list[nn.Parameter]] | None = None,
    extra_modules: dict[str, nn.Module] | None = None, console: Any = None, device: str | torch.device = "cpu",
    evaluate: EvalFn | None = None,
) -> LoopResult:
    """Train ``model`` for ``cfg.steps`` steps, resuming from ``out_dir/train_state.pt`` if present.

    ``param_groups``: name -> parameters (``"encoder"`` gets ``lr * backbone_lr_mult``); default one
    group of all model parameters; trainable ``extra_modules`` parameters not listed get a group
    ``"extra"``. Extra modules are saved/restored with the state and their gradients averaged over
    ranks. Writes ``train_state.pt`` every ``checkpoint_every`` steps, at the end and on Ctrl-C /
    SIGTERM (then re-raises ``KeyboardInterrupt``); rank 0 writes ``metrics.jsonl`` and shows the bar.
    With ``evaluate`` and ``cfg.eval_every``, rank 0 validates every ``eval_every`` steps (not at the
    last step: the stage evaluates its final model itself) and logs the result as a metrics line
    ``{"step", "eval_seconds", <evaluate's keys>}``; evaluation time is not training time, and the
    RNG streams are restored afterwards, so validating never changes the trained weights.
    Raises :class:`TrainingDivergedError` on a non-finite loss, before the weights are touched.
    """
    return _Run(out_dir=Path(out_dir), model=model, step_fn=step_fn, dataset=dataset, collate=collate, cfg=cfg,
                param_groups=param_groups, extra=dict(extra_modules or {}), console=console,
                device=torch.device(device), evaluate=evaluate).run()


class _Run:
    """One invocation's mutable state; the methods are the loop's phases."""

    def __init__(self, *, out_dir: Path, model: nn.Module, step_fn: StepFn, dataset: TorchDataset,
                 collate: Callable | None, cfg: LoopConfig, param_groups: dict[str, list[nn.Parameter]] | None,
                 extra: dict[str, nn.Module], console: Any, device: torch.device,
                 evaluate: EvalFn | None = None) -> None:
        self.out_dir, self.state_path, self.cfg, self.device = out_dir, out_dir / STATE_FILE, cfg, device
        self.model, self.extra, self.step_fn = model.to(device), {k: m.to(device) for k, m in extra.items()}, step_fn
        self.dataset, self.collate, self.evaluate = dataset, collate, evaluate
        self.rank, self.world = rank_and_world()
        self.console = console if self.rank == 0 else None
        self.optimizer = build_optimizer(complete_groups(param_groups, self.model, self.extra), cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.extra_params = [p for m in self.extra.values() for p in m.parameters() if p.requires_grad]
        self.amp = cfg.amp and device.type == "cuda"
        # bfloat16 has float32's range: no loss scaling needed
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and cfg.amp_dtype == "float16")
        self.step, self.epoch, self.batch, self.elapsed = 0, 0, 0, 0.0
        self.losses: dict[str, float] = {}
        self.rng: dict[str, Any] = {}
        self.saved_step: int | None = None
        self.step_lrs: dict[str, float] = {}
        self.updating = False

    def run(self) -> LoopResult:
        start = time.perf_counter()
        resumed_from = self.resume()
        if self.step < self.cfg.steps:
            self.train(resumed_from)
        return LoopResult(steps=self.step, resumed_from=resumed_from, final_losses=dict(self.losses),
                          seconds=time.perf_counter() - start)

    def resume(self) -> int | None:
        """Continue from ``train_state.pt`` (weights, optimizer, schedule, RNG, data position) or seed afresh."""
        if not self.state_path.is_file():
            seed_everything(self.cfg.seed + self.rank)
            self.rng = capture_rng()
            return None
        state = load_state(self.state_path)
        check_compatible(state, asdict(self.cfg), self.world, self.state_path)
        restore_modules(state, self.model, self.extra, self.state_path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError) as exc:
            raise TrainingStateError(f"{self.state_path}: optimizer state does not fit ({exc})") from exc
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.rng = state["rng"][self.rank]
        restore_rng(self.rng)
        self.step, self.epoch, self.batch = state["step"], state["epoch"], state["batch"]
        self.losses, self.elapsed, self.saved_step = dict(state["losses"]), state["elapsed"], state["step"]
        return self.step

    def train(self, resumed_from: int | None) -> None:
        net = wrap_ddp(self.model, find_unused_parameters=self.cfg.find_unused_parameters) \
            if self.world > 1 else self.model
        for module in (self.model, *self.extra.values()):
            module.train()
        log = MetricsLog(path=self.out_dir / METRICS, keep_until=resumed_from or 0) if self.rank == 0 else None
        bar = ProgressBar(console=self.console, total=self.cfg.steps, completed=self.step)
        window, batches = StepWindow(), self.batches()
        try:
            with StopRequest() as stop:
                while self.step < self.cfg.steps:
                    tick = time.perf_counter()
                    epoch, index, batch = next(batches)
                    values = self.train_step(net, batch)
                    seconds = time.perf_counter() - tick
                    self.advance(epoch, index, seconds)
                    window.add(values, seconds)
                    bar.update(completed=self.step, terms=values)
                    self.after_step(window, log, epoch)
                    if any_flag([stop.requested], self.device)[0]:
                        self.checkpoint()
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            # in DDP only the collective stop path may save: the other ranks must take part in it
            if self.world == 1 and not self.updating:
                self.checkpoint()
            raise
        finally:
            bar.close()

    def batches(self) -> Iterator[tuple[int, int, Any]]:
        """``(epoch, global batch index, batch)`` forever, starting at the saved position."""
        epoch, start = self.epoch, self.batch
        while True:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            sampler = ShardedBatchSampler(dataset_size=len(self.dataset), batch_size=self.cfg.batch_size,
                                          seed=self.cfg.seed, epoch=epoch, rank=self.rank, world_size=self.world,
                                          start=start)
            # a private generator: DataLoader draws worker seeds from it, not from the global RNG stream
            loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=self.collate,
                                num_workers=self.cfg.num_workers, worker_init_fn=worker_init,
                                generator=torch.Generator().manual_seed(self.cfg.seed),
                                pin_memory=self.device.type == "cuda")
            for index, batch in enumerate(loader, start=start):
                yield epoch, index, batch
            epoch, start = epoch + 1, 0

    def train_step(self, net: nn.Module, batch: Any) -> dict[str, float]:
        """Forward, guard, backward, clip, update; returns the step's terms and ``grad_norm`` as floats."""
        self.optimizer.zero_grad(set_to_none=True)
        dtype = torch.float16 if self.cfg.amp_dtype == "float16" else torch.bfloat16
        with torch.autocast(device_type=self.device.type, dtype=dtype, enabled=self.amp):
            terms = self.step_fn(net, to_device(batch, self.device), self.step)
        values = self.guard(terms)
        self.scaler.scale(terms["loss"]).backward()
        average_gradients(self.extra_params)
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf)
        if not self.scaler.is_enabled() and not bool(torch.isfinite(norm)):
            raise self.diverged(["grad_norm"])  # with a scaler, inf gradients just skip the step
        values["grad_norm"] = float(norm)
        self.step_lrs = group_lrs(self.optimizer)  # the lr this update uses, before the schedule advances
        self.updating = True
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.updating = False
        return values

    def guard(self, terms: dict[str, Any]) -> dict[str, float]:
        """The terms as floats; raise before backward when the loss is non-finite on any rank."""
        if not isinstance(terms.get("loss"), Tensor):
            raise TypeError("step_fn must return a dict with a scalar tensor under 'loss'")
        values = {k: float(v.detach()) if isinstance(v, Tensor) else float(v) for k, v in terms.items()}
        if any_flag([not math.isfinite(values["loss"])], self.device)[0]:
            bad = [k for k, v in values.items() if not math.isfinite(v)]
            raise self.diverged(bad or ["loss (on another rank)"])
        return values

    def diverged(self, terms: list[str]) -> TrainingDivergedError:
        kept = self.state_path if self.saved_step is not None else None
        return TrainingDivergedError(step=self.step + 1, terms=terms, checkpoint=kept, checkpoint_step=self.saved_step)

    def advance(self, epoch: int, index: int, seconds: float) -> None:
        """Record the data position and RNG streams after a completed step (what a checkpoint stores)."""
        per_epoch = ShardedBatchSampler.batches_per_epoch(len(self.dataset), self.cfg.batch_size)
        self.epoch, self.batch = (epoch + 1, 0) if index + 1 >= per_epoch else (epoch, index + 1)
        self.elapsed += seconds
        self.rng = capture_rng()

    def after_step(self, window: StepWindow, log: MetricsLog | None, epoch: int) -> None:
        final = self.step == self.cfg.steps
        if self.step % self.cfg.log_every == 0 or final:
            means = window.flush()  # collective: every rank reaches the same log steps
            self.losses = {k: v for k, v in means.items() if v is not None and k != "step_seconds"}
            if log is not None:
                lrs = {f"lr_{k}": v for k, v in self.step_lrs.items()}
                log.write({"step": self.step, "epoch": epoch, "seconds": round(self.elapsed, 3),
                           "lr": self.cfg.lr * lr_lambda(self.step - 1, self.cfg), **lrs, **means,
                           **self.speed(means.get("step_seconds"))})
        if self.evaluate is not None and self.cfg.eval_every and self.step % self.cfg.eval_every == 0 and not final:
            self.validate(log, epoch)
        if self.step % self.cfg.checkpoint_every == 0 or final:
            self.checkpoint()

    def speed(self, step_seconds: float | None) -> dict[str, float]:
        """``samples_per_second`` over all ranks (a sample is one image, or one labeled + pseudo-labeled
        pair where a stage's batch counts pairs) and, on CUDA, this rank's peak allocated memory so far."""
        speed = {}
        if step_seconds:
            speed["samples_per_second"] = round(self.cfg.batch_size * self.world / step_seconds, 3)
        if self.device.type == "cuda":
            speed["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return speed

    def validate(self, log: MetricsLog | None, epoch: int) -> None:
        """Rank 0 evaluates the model (eval mode, RNG streams untouched); every rank waits for it."""
        if self.rank == 0:
            tick, rng = time.perf_counter(), capture_rng()
            self.model.eval()
            try:
                results = self.evaluate(self.model)
            finally:
                self.model.train()
                restore_rng(rng)
            if log is not None:
                log.write({"step": self.step, "epoch": epoch, "seconds": round(self.elapsed, 3),
                           "eval_seconds": round(time.perf_counter() - tick, 2), **results})
        barrier()

    def checkpoint(self) -> None:
        """Write ``train_state.pt`` for the last completed step (rank 0; every rank joins the gather)."""
        if self.saved_step == self.step:
            return
        state = gather_state(
            step=self.step, epoch=self.epoch, batch=self.batch, world_size=self.world, config=asdict(self.cfg),
            model=self.model, extra=self.extra, optimizer=self.optimizer, scheduler=self.scheduler,
            scaler=self.scaler, rng=self.rng, losses=self.losses, elapsed=self.elapsed,
        )
        if self.rank == 0:
            save_state(self.state_path, state)
        barrier()  # no rank leaves (or exits on a stop request) before the state is on disk
        self.saved_step = self.step
