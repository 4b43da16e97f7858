"""The resumable training state: one ``train_state.pt`` per run, written atomically, read safely.

Layout (every value a tensor or plain Python type, so ``torch.load(weights_only=True)`` reads it)::

    {"format": 1, "step": int (completed optimizer steps), "epoch": int, "batch": int (next global
     batch of that epoch), "world_size": int, "config": {LoopConfig fields}, "model": state_dict,
     "extra": {name: state_dict}, "optimizer": ..., "scheduler": ..., "scaler": ...,
     "rng": [per-rank {"torch", "cuda", "numpy", "python"}], "losses": {term: float}, "elapsed": float}

Restoring all of it (RNG streams and data position included) makes the continued run take the
same steps as one that was never interrupted.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sskd_deploy.errors import SSKDError
from sskd_deploy.io import atomic_write_bytes
from sskd_deploy.training.distributed import gather_objects

STATE_FILE = "train_state.pt"
FORMAT = 1
# LoopConfig fields that do not change the trained weights: a resume may change them freely
NON_SCHEDULE_FIELDS = frozenset({"checkpoint_every", "log_every", "num_workers", "find_unused_parameters"})


class TrainingStateError(SSKDError):
    """A ``train_state.pt`` cannot continue this run (other schedule, other model, unreadable)."""


class TrainingDivergedError(SSKDError):
    """The loss became NaN/inf; ``train_state.pt`` (if any) still holds the last good step."""

    def __init__(self, *, step: int, terms: list[str], checkpoint: Path | None, checkpoint_step: int | None) -> None:
        self.step, self.terms = step, list(terms)
        kept = "no checkpoint was written yet" if checkpoint is None else \
            f"the last good checkpoint ({checkpoint}, step {checkpoint_step}) is kept"
        super().__init__(f"training diverged at step {step}: non-finite {', '.join(terms)}; {kept}. "
                         "Lower the learning rate or check the data, then rerun to resume.")


def capture_rng() -> dict[str, Any]:
    """This process's RNG streams as tensors and plain types: ``{"torch", "cuda", "numpy", "python"}``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_rng(saved: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])
    n = saved["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = saved["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's global RNG and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def gather_state(
    *, model: nn.Module, extra: dict[str, nn.Module], optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
    rng: dict[str, Any], **fields: Any,
) -> dict[str, Any]:
    """The state dict of the module docstring; collective (every rank must call it: RNG streams are gathered).

    ``fields``: step, epoch, batch, world_size, config, losses, elapsed.
    """
    return {
        **fields, "model": model.state_dict(), "extra": {k: m.state_dict() for k, m in extra.items()},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "rng": gather_objects(rng),
    }


def save_state(path: Path, state: dict[str, Any]) -> Path:
    """Serialise ``state`` in memory, then replace ``path`` atomically (a crash leaves the old file)."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Path) -> dict[str, Any]:
    """The state at ``path`` on the CPU, read with ``weights_only=True``; clear error when unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise TrainingStateError(f"{path}: cannot read the training state ({exc}); delete it to start over") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingStateError(f"{path}: not a training state of format {FORMAT}; delete it to start over")
    return state


def check_compatible(state: dict[str, Any], config: dict[str, Any], world_size: int, path: Path) -> None:
    """Refuse to mix runs: every schedule-relevant config field and the world size must match."""
    saved = state.get("config", {})
    problems = [f"{k}={saved.get(k)!r} there, {v!r} now" for k, v in sorted(config.items())
                if k not in NON_SCHEDULE_FIELDS and saved.get(k) != v]
    if state.get("world_size") != world_size:
        # each rank's RNG streams are stored; another process count cannot continue them exactly
        problems.append(f"world_size={state.get('world_size')} there, {world_size} now")
    if problems:
        raise TrainingStateError(f"{path}: written by a different run ({'; '.join(problems)}); resume with the "
                                 "same settings, or use a new output directory / delete the file to start over")


def restore_modules(state: dict[str, Any], model: nn.Module, extra: dict[str, nn.Module], path: Path) -> None:
    """Load the saved weights of ``model`` and of each extra module (strict: names and shapes must match)."""
    missing = sorted(set(extra) ^ set(state["extra"]))
    if missing:
        raise TrainingStateError(f"{path}: extra modules differ ({', '.join(missing)}); start over in a new directory")
    try:
        model.load_state_dict(state["model"])
        for name, module in extra.items():
            module.load_state_dict(state["extra"][name])
    except RuntimeError as exc:
        raise TrainingStateError(f"{path}: saved weights do not fit this model ({exc})") from exc
