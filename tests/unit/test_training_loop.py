"""The shared training loop on a toy regression: schedule, resume equality, NaN guard, atomic state, logs."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
import os
import random
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from sskd_deploy.errors import ConfigError, SSKDError
from sskd_deploy.training.distributed import ShardedBatchSampler
from sskd_deploy.training.logging import plot_curves
from sskd_deploy.training.loop import LoopConfig, TrainingDivergedError, TrainingStateError, train_loop
from sskd_deploy.training.optim import build_optimizer, build_scheduler, complete_groups, lr_lambda


class ToySet(torch.utils.data.Dataset):
    """y = x . w + noise; per-sample noise from (seed, epoch, index) as the loop's contract asks."""

    def __init__(self, n: int = 24, seed: int = 3) -> None:
        gen = np.random.default_rng(seed)
        self.x = gen.normal(size=(n, 4)).astype(np.float32)
        self.y = self.x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)
        self.seed, self.epoch, self.epochs_seen = seed, 0, []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_seen.append(epoch)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict:
        noise = np.random.default_rng((self.seed, self.epoch, index)).normal(scale=0.05)
        return {"x": torch.from_numpy(self.x[index]), "y": torch.tensor([self.y[index] + noise], dtype=torch.float32)}


class ToyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.1))
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"encoder": list(self.encoder.parameters()), "decoder": list(self.head.parameters())}


def make_step(scale: nn.Module, *, stop_at: int | None = None, action: str = "", calls: list | None = None):
    """A step using all three global RNG streams (dropout; numpy and python jitter) and an extra module."""

    def step_fn(model: nn.Module, batch: dict, step: int) -> dict:
        if calls is not None:
            calls.append(step)
        if step == stop_at and action == "keyboard":
            raise KeyboardInterrupt
        if step == stop_at and action == "crash":
            raise RuntimeError("killed")
        if step == stop_at and action == "signal":
            os.kill(os.getpid(), signal.SIGINT)
        jitter = 1.0 + 0.01 * np.random.rand() + 0.01 * random.random()
        mse = ((scale(model(batch["x"])) - batch["y"]) ** 2).mean() * jitter
        if step == stop_at and action == "nan":
            mse = mse * float("nan")
        return {"loss": mse, "mse": mse.detach(), "undefined": float("nan")}

    return step_fn


def run(out: Path, cfg: LoopConfig, **step_kwargs) -> tuple[ToyModel, nn.Module, object]:
    torch.manual_seed(0)
    model, scale = ToyModel(), nn.Linear(1, 1)
    result = train_loop(out_dir=out, model=model, step_fn=make_step(scale, **step_kwargs), dataset=ToySet(),
                        collate=None, cfg=cfg, param_groups=model.parameter_groups(),
                        extra_modules={"scale": scale})
    return model, scale, result


CFG = LoopConfig(steps=20, batch_size=8, lr=1e-2, warmup_steps=4, checkpoint_every=5, log_every=1, seed=7)


def assert_same_weights(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=atol, rtol=0), name


def test_loss_decreases_and_logs_parse(tmp_path: Path) -> None:
    _, _, result = run(tmp_path, LoopConfig(steps=60, batch_size=8, lr=5e-2, warmup_steps=5, log_every=5, grad_clip=5.0))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(5, 61, 5))
    assert lines[-1]["loss"] < 0.3 * lines[0]["loss"]
    assert lines[0]["undefined"] is None  # nan diagnostics become JSON null, not NaN
    assert {"lr", "lr_encoder", "lr_decoder", "seconds", "grad_norm", "epoch"} <= set(lines[0])
    assert lines[0]["samples_per_second"] == pytest.approx(8 / lines[0]["step_seconds"], rel=0.01)
    assert "cuda_peak_mib" not in lines[0]  # a CUDA run only
    assert result.steps == 60 and result.resumed_from is None
    assert result.final_losses["loss"] == pytest.approx(lines[-1]["loss"])
    png = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("action", "resume_step"), [("keyboard", 12), ("crash", 10), ("signal", 13)])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path: Path, action: str, resume_step: int) -> None:
    if action == "signal" and threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed in the main thread")
    reference, ref_scale, _ = run(tmp_path / "a", CFG)
    expected = RuntimeError if action == "crash" else KeyboardInterrupt
    with pytest.raises(expected):
        run(tmp_path / "b", CFG, stop_at=12, action=action)
    saved = torch.load(tmp_path / "b" / "train_state.pt", weights_only=True)
    assert saved["step"] == resume_step
    model, scale, result = run(tmp_path / "b", CFG)
    assert result.resumed_from == resume_step and result.steps == 20
    assert_same_weights(model, reference)
    assert_same_weights(scale, ref_scale)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))  # lines past the checkpoint were dropped, then rewritten once


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TrainingDivergedError, match=r"step 13: non-finite loss, mse, undefined") as info:
        run(tmp_path, CFG, stop_at=12, action="nan")
    assert isinstance(info.value, SSKDError) and info.value.step == 13
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)
    assert state["step"] == 10
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_finished_run_returns_without_training(tmp_path: Path) -> None:
    trained, _, _ = run(tmp_path, CFG)
    calls: list[int] = []
    model, _, result = run(tmp_path, CFG, calls=calls)
    assert calls == [] and result.resumed_from == 20 and result.final_losses
    assert_same_weights(model, trained, atol=0)


def test_resume_with_other_schedule_is_rejected(tmp_path: Path) -> None:
    run(tmp_path, LoopConfig(steps=6, batch_size=8, warmup_steps=2))
    with pytest.raises(TrainingStateError, match=r"steps=6 there, 8 now"):
        run(tmp_path, LoopConfig(steps=8, batch_size=8, warmup_steps=2))
    # logging cadence does not change the weights: accepted
    assert run(tmp_path, LoopConfig(steps=6, batch_size=8, warmup_steps=2, log_every=3))[2].resumed_from == 6


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync, armed = os.fsync, []

    def failing_fsync(fd: int) -> None:
        if armed and "train_state" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError("disk full")
        real_fsync(fd)

    monkeypatch.setattr("sskd_deploy.io.os.fsync", failing_fsync)
    torch.manual_seed(0)
    model, scale = ToyModel(), nn.Linear(1, 1)
    inner = make_step(scale)

    def step_fn(m: nn.Module, batch: dict, step: int) -> dict:
        if step == 7:
            armed.append(True)
        return inner(m, batch, step)

    with pytest.raises(OSError, match="disk full"):
        train_loop(out_dir=tmp_path, model=model, step_fn=step_fn, dataset=ToySet(), collate=None, cfg=CFG,
                   param_groups=model.parameter_groups(), extra_modules={"scale": scale})
    assert torch.load(tmp_path / "train_state.pt", weights_only=True)["step"] == 5
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_lr_schedule_and_groups() -> None:
    cfg = LoopConfig(steps=14, lr=1e-3, backbone_lr_mult=0.1, warmup_steps=4, poly_power=0.9)
    assert [lr_lambda(s, cfg) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_lambda(4, cfg) == 1.0 and lr_lambda(9, cfg) == pytest.approx(0.5**0.9)
    decay = [lr_lambda(s, cfg) for s in range(4, 14)]
    assert all(a > b > 0 for a, b in itertools.pairwise(decay))
    model = ToyModel()
    optimizer = build_optimizer(model.parameter_groups(), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"encoder", "encoder.no_decay", "decoder", "decoder.no_decay"}
    assert groups["encoder.no_decay"]["weight_decay"] == 0 and groups["decoder"]["weight_decay"] == 0.05
    for step in range(6):
        assert groups["encoder"]["lr"] == pytest.approx(1e-4 * lr_lambda(step, cfg))
        assert groups["decoder.no_decay"]["lr"] == pytest.approx(1e-3 * lr_lambda(step, cfg))
        optimizer.step()
        scheduler.step()


def test_param_group_checks() -> None:
    model = ToyModel()
    with pytest.raises(ValueError, match="in no param group: head.weight"):
        complete_groups({"encoder": list(model.encoder.parameters())}, model, {})
    extra = nn.Linear(2, 2)
    groups = complete_groups(model.parameter_groups(), model, {"proj": extra})
    assert groups["extra"] == list(extra.parameters())
    with pytest.raises(ValueError, match="repeats"):
        build_optimizer({"a": list(model.parameters()), "b": list(model.head.parameters())}, LoopConfig(steps=2))


def test_config_validation_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        LoopConfig(steps=0, lr=-1.0, amp_dtype="float8")
    assert len(info.value.problems) == 3


def test_sampler_shards_are_disjoint_and_cover_the_global_batch() -> None:
    kwargs = {"dataset_size": 10, "batch_size": 4, "seed": 1, "epoch": 2}
    whole = list(ShardedBatchSampler(**kwargs))
    shards = [list(ShardedBatchSampler(**kwargs, rank=r, world_size=2)) for r in range(2)]
    assert len(whole) == 3 and all(len(b) == 4 for b in whole)  # padded: 10 -> 12 by repeating the order
    for b, batch in enumerate(whole):
        assert shards[0][b] + shards[1][b] == batch
        assert not set(shards[0][b]) & set(shards[1][b]) or b == 2  # only the padded batch may repeat
    assert sorted({i for batch in whole for i in batch}) == list(range(10))
    assert list(ShardedBatchSampler(**kwargs, start=1)) == whole[1:]
    assert list(ShardedBatchSampler(**{**kwargs, "epoch": 3})) != whole
    with pytest.raises(ValueError, match="divisible"):
        ShardedBatchSampler(**kwargs, world_size=3)


def test_epochs_are_announced_and_progress_shows_terms(tmp_path: Path) -> None:
    dataset, model, buffer = ToySet(), ToyModel(), io.StringIO()
    cfg = LoopConfig(steps=7, batch_size=8, warmup_steps=1)
    train_loop(out_dir=tmp_path, model=model, step_fn=make_step(nn.Identity()), dataset=dataset, collate=None,
               cfg=cfg, console=Console(file=buffer, force_terminal=True, width=160))
    assert dataset.epochs_seen == [0, 1, 2]  # 24 samples / batch 8 = 3 steps per epoch
    text = buffer.getvalue()
    assert "7/7" in text and "mse" in text and "eta" in text


class Boxes(torch.utils.data.Dataset):
    """Four 64x96 images, one bright rectangle each (the instance), as uint8 + mask targets."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        image, mask = torch.zeros(3, 64, 96, dtype=torch.uint8), torch.zeros(1, 64, 96, dtype=torch.bool)
        mask[0, 8 + 4 * i : 40, 16:60] = True
        image[:, mask[0]] = 200
        return {"weak": image, "target": {"labels": torch.tensor([i % 3]), "masks": mask}}


def test_maskformer_student_trains_through_the_loop(tmp_path: Path) -> None:
    from sskd_deploy.config.model import PRESETS
    from sskd_deploy.models.criterion import SetCriterion
    from sskd_deploy.models.maskformer import build_model

    torch.manual_seed(0)
    model = build_model(PRESETS["student-tiny"].with_classes(3).updated(input_size=(64, 96)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    criterion = SetCriterion(num_classes=3, num_points=256)

    def step_fn(m: nn.Module, batch: dict, step: int) -> dict:
        net = m.module if hasattr(m, "module") else m
        return {"loss": criterion(m(net.normalize(batch["weak"])), batch["targets"])["loss"]}

    def collate(samples: list[dict]) -> dict:
        return {"weak": torch.stack([s["weak"] for s in samples]), "targets": [s["target"] for s in samples]}

    cfg = LoopConfig(steps=3, batch_size=2, lr=1e-3, backbone_lr_mult=0.1, warmup_steps=1, log_every=1)
    result = train_loop(out_dir=tmp_path, model=model, step_fn=step_fn, dataset=Boxes(), collate=collate, cfg=cfg,
                        param_groups=model.parameter_groups())
    assert result.steps == 3 and math.isfinite(result.final_losses["loss"])
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert line["lr_encoder"] == pytest.approx(0.1 * line["lr_decoder"]) and line["lr"] == line["lr_decoder"]
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("transformer_decoder.") for k in changed)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (AMP + GradScaler path)")
def test_amp_on_cuda_checkpoints_the_scaler(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, scale = ToyModel(), nn.Linear(1, 1)
    cfg = LoopConfig(steps=6, batch_size=8, warmup_steps=1, checkpoint_every=3, amp=True)
    result = train_loop(out_dir=tmp_path, model=model, step_fn=make_step(scale), dataset=ToySet(), collate=None,
                        cfg=cfg, param_groups=model.parameter_groups(), extra_modules={"scale": scale}, device="cuda")
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)
    assert result.steps == 6 and state["scaler"]["scale"] > 0
    assert next(model.parameters()).device.type == "cuda"
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["cuda_peak_mib"] > 0 and last["samples_per_second"] > 0


def test_metrics_log_drops_lines_past_the_resume_point_and_torn_lines(tmp_path: Path) -> None:
    from sskd_deploy.training.logging import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "loss": 1.2}\n{"step": 4, "lo')
    log = MetricsLog(path=path, keep_until=2)
    log.write({"step": 3, "loss": 1.0})
    assert [json.loads(line)["loss"] for line in path.read_text().splitlines()] == [2.0, 1.5, 1.0]


def test_validation_every_n_steps_is_logged_and_never_changes_the_weights(tmp_path: Path) -> None:
    """``eval_every``: evaluate on rank 0 at steps 5, 10, 15 (the last step belongs to the stage), in eval
    mode, and an interrupted, resumed run with validation still reaches the uninterrupted weights."""
    seen: list[tuple[int, bool]] = []

    def evaluate(model: nn.Module) -> dict:
        seen.append((len(seen), model.training))
        with torch.no_grad():
            value = float(model(torch.ones(1, 4)).sum())
        torch.rand(3), np.random.rand(), random.random()  # draws that must not leak into training
        return {"val_ap": value}

    cfg = dataclasses.replace(CFG, eval_every=5)
    torch.manual_seed(0)
    model, scale = ToyModel(), nn.Linear(1, 1)
    train_loop(out_dir=tmp_path / "a", model=model, step_fn=make_step(scale), dataset=ToySet(), collate=None,
               cfg=cfg, param_groups=model.parameter_groups(), extra_modules={"scale": scale}, evaluate=evaluate)
    assert [training for _, training in seen] == [False, False, False]
    lines = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in lines if "val_ap" in r]
    assert [r["step"] for r in evals] == [5, 10, 15] and all(r["eval_seconds"] >= 0 for r in evals)
    reference, _, _ = run(tmp_path / "ref", CFG)  # no validation at all
    assert_same_weights(model, reference)
    with pytest.raises(KeyboardInterrupt):  # interrupted after the step-10 validation, resumed
        torch.manual_seed(0)
        first, scale_b = ToyModel(), nn.Linear(1, 1)
        train_loop(out_dir=tmp_path / "b", model=first, step_fn=make_step(scale_b, stop_at=12, action="keyboard"),
                   dataset=ToySet(), collate=None, cfg=cfg, param_groups=first.parameter_groups(),
                   extra_modules={"scale": scale_b}, evaluate=evaluate)
    torch.manual_seed(0)
    resumed, scale_c = ToyModel(), nn.Linear(1, 1)
    train_loop(out_dir=tmp_path / "b", model=resumed, step_fn=make_step(scale_c), dataset=ToySet(), collate=None,
               cfg=cfg, param_groups=resumed.parameter_groups(), extra_modules={"scale": scale_c}, evaluate=evaluate)
    assert_same_weights(resumed, reference)
    lines = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "val_ap" in r] == [5, 10, 15]
    png = plot_curves(tmp_path / "b" / "metrics.jsonl", tmp_path / "curves.png")
    assert png.stat().st_size > 0


def test_no_decay_groups_keep_their_lr_and_skip_weight_decay() -> None:
    model = ToyModel()
    groups = {"encoder": [model.encoder[0].weight], "encoder.no_decay": [model.encoder[0].bias],
              "decoder": list(model.head.parameters())}
    optimizer = build_optimizer(groups, LoopConfig(steps=2, lr=1.0, backbone_lr_mult=0.1, weight_decay=0.3))
    by_name = {g["name"]: (g["lr"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups}
    assert by_name == {"encoder": (0.1, 0.3, 1), "encoder.no_decay": (0.1, 0.0, 1), "decoder": (1.0, 0.3, 1),
                       "decoder.no_decay": (1.0, 0.0, 1)}
