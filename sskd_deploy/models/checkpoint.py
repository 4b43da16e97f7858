"""Checkpoints: weights + model config + IOSpec in one file.

The default format is safetensors (no pickle; the config and the IOSpec travel as JSON in its
metadata). ``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)`` only. Loading
into a model config that differs from the saved one fails with the list of differing fields,
never with a wall of state-dict shape errors.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sskd_deploy.config.model import ModelConfig
from sskd_deploy.errors import InputError
from sskd_deploy.spec import IOSpec

CHECKPOINT_FORMAT = "sskd-deploy/checkpoint"
# 2: the ViT encoder pads its input to whole patches and the pixel decoder places every token where
# its pixels are. Version-1 files (no "version" key) were trained with a patch grid stretched over
# the image; their weights load into the new network without a shape error but predict misplaced
# masks, so they are refused rather than loaded silently wrong.
CHECKPOINT_VERSION = 2
# Fields that may differ between a checkpoint and the config loading it: where the backbone
# weights originally came from does not change the network.
IGNORED_FIELDS = {"encoder.weights"}


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds. ``state_dict`` maps parameter names to CPU tensors."""

    model_config: ModelConfig
    spec: IOSpec
    state_dict: dict[str, torch.Tensor]
    extra: dict[str, Any] = field(default_factory=dict)


def _atomic(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(
    path: str | Path, *, model: nn.Module, config: ModelConfig, spec: IOSpec, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model``'s weights with its config and IOSpec (safetensors unless the suffix is .pt/.pth)."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": str(CHECKPOINT_VERSION),
        "model_config": config.model_dump_json(),
        "iospec": spec.to_json(),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    if path.suffix in (".pt", ".pth"):
        return _atomic(path, lambda tmp: torch.save({"state_dict": tensors, **meta}, tmp))
    from safetensors.torch import save_file

    return _atomic(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _read_raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        if path.suffix in (".pt", ".pth"):
            raw = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(raw, dict) or "state_dict" not in raw:
                raise InputError(path, "not an sskd-deploy checkpoint (no state_dict)")
            return raw["state_dict"], {k: v for k, v in raw.items() if k != "state_dict"}
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            return {k: handle.get_tensor(k) for k in handle.keys()}, meta
    except InputError:
        raise
    except Exception as err:  # safetensors/pickle raise many types for corrupt files
        raise InputError(path, f"unreadable checkpoint ({type(err).__name__}: {err})") from None


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file without building a model."""
    path = Path(path)
    state, meta = _read_raw(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"not an sskd-deploy checkpoint (format {meta.get('format')!r})")
    version = str(meta.get("version", "1"))
    if version != str(CHECKPOINT_VERSION):
        raise InputError(path, f"checkpoint version {version}, this sskd-deploy reads version {CHECKPOINT_VERSION}: "
                         "version-1 models were trained with the ViT patch grid stretched over the image "
                         "(misplaced masks); retrain it with this version (`sskd-deploy train`)")
    try:
        config = ModelConfig.model_validate_json(meta["model_config"])
        spec = IOSpec.from_json(meta["iospec"], str(path))
        extra = json.loads(meta.get("extra") or "{}")
    except (KeyError, ValueError) as err:
        raise InputError(path, f"corrupt checkpoint metadata ({err})") from None
    return Checkpoint(config, spec, state, extra)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        flat.update(_flatten(value, name + ".") if isinstance(value, dict) else {name: value})
    return flat


def config_differences(saved: ModelConfig, wanted: ModelConfig) -> list[str]:
    """``field: saved -> wanted`` for every field that differs (ignoring :data:`IGNORED_FIELDS`)."""
    a, b = _flatten(saved.model_dump(mode="json")), _flatten(wanted.model_dump(mode="json"))
    return [
        f"{key}: checkpoint has {a.get(key)!r}, config asks for {b.get(key)!r}"
        for key in sorted(set(a) | set(b))
        if key not in IGNORED_FIELDS and a.get(key) != b.get(key)
    ]


def load_model(path: str | Path, *, expect: ModelConfig | None = None) -> tuple[nn.Module, Checkpoint]:
    """Build the checkpoint's model (eval mode) and load its weights.

    With ``expect``, the saved model config must match it (except :data:`IGNORED_FIELDS`).
    """
    from sskd_deploy.models.maskformer import build_model

    checkpoint = read_checkpoint(path)
    if expect is not None:
        diff = config_differences(checkpoint.model_config, expect)
        if diff:
            shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
            raise InputError(path, f"checkpoint was saved for a different model config: {shown}")
    config = checkpoint.model_config.updated(encoder={"weights": None})
    model = build_model(config)
    try:
        result = model.load_state_dict(checkpoint.state_dict, strict=False)
    except RuntimeError as err:  # shape mismatches
        first = str(err).strip().splitlines()[1:2] or [str(err)]
        raise InputError(path, f"weights do not fit the saved config: {first[0].strip()}") from None
    if result.missing_keys or result.unexpected_keys:
        missing, unexpected = result.missing_keys, result.unexpected_keys
        raise InputError(
            path, f"weights do not fit the saved config: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})",
        )
    return model.eval(), checkpoint
