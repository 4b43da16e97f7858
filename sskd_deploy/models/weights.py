"""Pretrained DINOv2 encoder weights from local files: formats, key conversion, shape adaptation.

Nothing is ever downloaded. Two layouts are read:

- a Hugging Face directory: ``config.json`` plus ``model.safetensors`` (or a sharded
  ``model.safetensors.index.json``, or ``pytorch_model.bin``), as ``save_pretrained`` writes it or
  as ``facebook/dinov2-*`` is downloaded. The encoder may sit under a prefix (``dinov2.`` in the
  classifier, ``backbone.`` in DPT / Depth-Anything, whose config.json nests ``backbone_config``);
  the other keys are ignored and reported.
- an original facebookresearch/dinov2 checkpoint (``.pth``, ``torch.load(weights_only=True)``),
  bare or wrapped in ``{"teacher"|"model"|"state_dict": ...}``, possibly prefixed (``backbone.``,
  ``teacher.backbone.``), with plain ``blocks.{i}.`` or chunked ``blocks.{chunk}.{i}.`` names.
  The fused ``attn.qkv`` projection is split into query, key and value (in that order).

Both are brought to one canonical layout, the Hugging Face hub names
(``encoder.layer.{i}.attention.attention.query.weight`` ...), then renamed to what the installed
``transformers`` calls its parameters (5.x: ``attention.q_proj`` ...). Two shape differences are
adapted rather than refused: the position-embedding grid and the patch size (see the resize
functions). Register tokens (``*_reg`` checkpoints) and ViT-g's SwiGLU feed-forward are refused
with a clear error: :class:`~sskd_deploy.config.model.EncoderConfig` describes neither.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from sskd_deploy.config.model import EncoderConfig
from sskd_deploy.errors import InputError

StateDict = dict[str, Tensor]

WEIGHTS_HELP = ("encoder weights not found; expected a Hugging Face directory with config.json and "
                "model.safetensors, or an original DINOv2 .pth file")
_HF_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_WRAPPERS = ("teacher", "model", "state_dict")  # teacher first: DINOv2 evaluates its teacher
_OPTIONAL = {"embeddings.mask_token"}  # iBOT pretraining only; our encoder has none
# Hub names -> transformers 5.x names (save_pretrained writes the hub names back).
_RENAMES = (("attention.attention.query.", "attention.q_proj."),
            ("attention.attention.key.", "attention.k_proj."),
            ("attention.attention.value.", "attention.v_proj."),
            ("attention.output.dense.", "attention.o_proj."))
_ORIGINAL_TOP = {
    "cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token",
    "pos_embed": "embeddings.position_embeddings",
    "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
}
_ORIGINAL_BLOCK = {"norm1.": "norm1.", "norm2.": "norm2.", "attn.proj.": "attention.output.dense.",
                   "mlp.fc1.": "mlp.fc1.", "mlp.fc2.": "mlp.fc2.", "ls1.gamma": "layer_scale1.lambda1",
                   "ls2.gamma": "layer_scale2.lambda1"}
_BLOCK = re.compile(r"blocks\.(?:\d+\.)?(\d+)\.(.+)")  # the optional chunk index is redundant
_LAYER = re.compile(r"encoder\.layer\.(\d+)\.")
_REGISTERS = "register tokens (DINOv2 *_reg checkpoints) are not supported by this encoder"
_SWIGLU = "the SwiGLU feed-forward of ViT-g/14 is not supported by this encoder; use ViT-S/B/L/14"
_UNSUPPORTED = {"register_tokens": _REGISTERS, "mlp.w12.": _SWIGLU, "mlp.weights_in.": _SWIGLU,
                "mlp.gate_proj.": _SWIGLU}
_HF_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "mlp_ratio": 4}
# An original checkpoint does not record its head count (the qkv shape is the same for any); the
# released DINOv2 widths each have one.
_DINOV2_HEADS = {384: 6, 768: 12, 1024: 16, 1536: 24}


def load_encoder_weights(backbone: nn.Module, path: Path, *, config: EncoderConfig) -> dict:
    """Load the DINOv2 weights at ``path`` into ``backbone`` (a ``transformers`` Dinov2 backbone/model).

    Returns ``{"source": weights file, "format": "huggingface" | "original", "loaded": [keys],
    "interpolated": {key: "old shape -> new shape"}, "ignored": [checkpoint keys not used]}``.
    Raises :class:`InputError` naming the file for a missing path, a config that does not match,
    unsupported variants, missing/unexpected keys or shapes that cannot be adapted.
    """
    state, ignored, layout, source = read_encoder_state(Path(path), config=config)
    target = backbone.state_dict()
    fitted, interpolated, dropped = fit_state(_rename_for(state, target), target, source)
    backbone.load_state_dict(fitted, strict=True)
    return {"source": str(source), "format": layout, "loaded": sorted(fitted), "interpolated": interpolated,
            "ignored": sorted(ignored + dropped)}


def read_encoder_state(path: Path, *, config: EncoderConfig) -> tuple[StateDict, list[str], str, Path]:
    """The encoder tensors at ``path`` in the canonical (hub) layout.

    Returns ``(state, ignored keys, layout, weights file)``; checks depth and width against ``config``.
    """
    if path.is_dir():
        raw, source = _read_hf_directory(path, config)
    elif path.is_file():
        raw, source = _read_file(path), path
    else:
        raise InputError(path, WEIGHTS_HELP)
    state, ignored, layout = _select_encoder(raw, source)
    if layout == "original":
        state = convert_original_state(state)
    for fragment, problem in _UNSUPPORTED.items():
        if any(fragment in key for key in state):
            raise InputError(source, problem)
    _check_geometry(state, config, source, heads=_DINOV2_HEADS if layout == "original" else {})
    return state, ignored, layout, source


def convert_original_state(state: StateDict) -> StateDict:
    """facebookresearch/dinov2 names -> hub names; ``attn.qkv`` (3D, D) splits into query/key/value.

    Keys it does not know keep their names, so they surface later as unexpected keys.
    """
    out: StateDict = {}
    for key, value in state.items():
        match = _BLOCK.fullmatch(key)
        if match is None:
            out[_ORIGINAL_TOP.get(key, key)] = value
            continue
        layer, rest = f"encoder.layer.{match.group(1)}.", match.group(2)
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            kind = rest.rsplit(".", 1)[1]
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"{layer}attention.attention.{name}.{kind}"] = part
            continue
        old = next((prefix for prefix in _ORIGINAL_BLOCK if rest.startswith(prefix)), None)
        out[layer + (rest if old is None else _ORIGINAL_BLOCK[old] + rest[len(old):])] = value
    return out


def fit_state(
    state: StateDict, target: StateDict, source: Path
) -> tuple[StateDict, dict[str, str], list[str]]:
    """Match ``state`` to ``target`` key by key, resizing position embeddings and the patch kernel.

    Returns ``(fitted with exactly target's keys, {key: "old -> new shape"}, optional keys dropped)``.
    """
    missing = [key for key in target if key not in state]
    unexpected = [key for key in state if key not in target and key not in _OPTIONAL]
    dropped = [key for key in state if key not in target and key in _OPTIONAL]
    fitted: StateDict = {}
    interpolated: dict[str, str] = {}
    mismatched = []
    for key in (key for key in target if key in state):
        value, want = state[key], target[key].shape
        if value.shape != want:
            resized = _resize(key, value, want)
            change = f"{tuple(value.shape)} -> {tuple(want)}"
            if resized is None:
                mismatched.append(f"{key} {change}")
                continue
            interpolated[key], value = change, resized
        fitted[key] = value
    problems = [_listing(label, keys) for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)) if keys]
    if problems:
        raise InputError(source, "weights do not fit the encoder: " + "; ".join(problems))
    return fitted, interpolated, dropped


def resize_position_embeddings(pos: Tensor, side: int) -> Tensor:
    """``(1, 1 + g*g, D)`` -> ``(1, 1 + side*side, D)``: CLS row kept, the g x g grid resized bicubically.

    Same interpolation as DINOv2 uses at run time for other input sizes (bicubic, no antialias).
    """
    grid = pos.shape[1] - 1
    old = math.isqrt(grid)
    if old * old != grid:
        raise ValueError(f"position embeddings of {grid} patches do not form a square grid")
    dim = pos.shape[-1]
    image = pos[:, 1:].reshape(1, old, old, dim).permute(0, 3, 1, 2).float()  # bicubic in float32
    image = F.interpolate(image, size=(side, side), mode="bicubic", align_corners=False)
    patches = image.permute(0, 2, 3, 1).reshape(1, side * side, dim).to(pos.dtype)
    return torch.cat([pos[:, :1], patches], dim=1)


def resize_patch_kernel(weight: Tensor, patch: int) -> Tensor:
    """Patch-embedding kernel ``(D, C, p0, p0)`` -> ``(D, C, patch, patch)``.

    The new kernel ``B^T w`` makes a ``patch``-sized patch ``x`` give exactly the token the
    pretrained kernel gives for ``x`` resized to ``p0`` (``B``: that bilinear, antialiased resize as
    a matrix), i.e. the new model sees what the pretrained one would see in the image rescaled by
    ``p0 / patch``. An approximation of retraining: exact per patch, while the pretrained features
    are only as good at that scale as DINOv2 is scale-robust. Constant patches keep their response.
    """
    old = weight.shape[-1]
    basis = torch.eye(patch * patch, dtype=torch.float64).reshape(patch * patch, 1, patch, patch)
    columns = F.interpolate(basis, size=(old, old), mode="bilinear", align_corners=False, antialias=True)
    resize = columns.reshape(patch * patch, old * old).T  # B: (p0*p0, patch*patch)
    kernel = weight.double().flatten(2) @ resize  # (D, C, p0*p0) @ B = B^T w per channel
    return kernel.reshape(*weight.shape[:2], patch, patch).to(weight.dtype)


def _resize(key: str, value: Tensor, want: torch.Size) -> Optional[Tensor]:
    """The adapted tensor for the two shape changes we support, else None."""
    if key.endswith("position_embeddings") and value.ndim == 3 and value.shape[-1] == want[-1]:
        side = math.isqrt(want[1] - 1)
        if side * side == want[1] - 1 and math.isqrt(value.shape[1] - 1) ** 2 == value.shape[1] - 1:
            return resize_position_embeddings(value, side)
    if key.endswith("patch_embeddings.projection.weight") and value.ndim == 4 and value.shape[:2] == want[:2]:
        if value.shape[2] == value.shape[3] and want[2] == want[3]:
            return resize_patch_kernel(value, want[-1])
    return None


def _read_hf_directory(path: Path, config: EncoderConfig) -> tuple[StateDict, Path]:
    config_file = path / "config.json"
    weights = next((path / name for name in _HF_FILES if (path / name).is_file()), None)
    if not config_file.is_file() or weights is None:
        found = sorted(p.name for p in path.iterdir())[:8]
        raise InputError(path, f"{WEIGHTS_HELP} (the directory holds {found or 'nothing'})")
    _check_hf_config(config_file, config)
    if not weights.name.endswith(".index.json"):
        return _read_file(weights), weights
    try:
        shards = sorted(set(json.loads(weights.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError) as err:
        raise InputError(weights, f"unreadable shard index ({err})") from None
    state: StateDict = {}
    for shard in shards:
        if Path(shard).name != shard:  # an index must not point outside its directory
            raise InputError(weights, f"shard name {shard!r} is not a file name")
        state.update(_read_file(path / shard))
    return state, weights


def _check_hf_config(config_file: Path, config: EncoderConfig) -> None:
    try:
        data = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise InputError(config_file, f"unreadable config.json ({err})") from None
    if data.get("model_type") != "dinov2" and isinstance(data.get("backbone_config"), dict):
        data = data["backbone_config"]  # DPT / Depth-Anything keep the encoder's config here
    if data.get("model_type") == "dinov2_with_registers":
        raise InputError(config_file, _REGISTERS)
    if data.get("model_type") != "dinov2":
        raise InputError(config_file, f"model_type {data.get('model_type')!r} is not a DINOv2 encoder")
    if data.get("use_swiglu_ffn"):
        raise InputError(config_file, _SWIGLU)
    ours = {"hidden_size": config.hidden_size, "num_hidden_layers": config.num_layers,
            "num_attention_heads": config.num_heads, "mlp_ratio": config.mlp_ratio}
    wrong = [f"{name} {data.get(name, _HF_DEFAULTS[name])} != {value}" for name, value in ours.items()
             if data.get(name, _HF_DEFAULTS[name]) != value]
    if wrong:  # patch_size may differ: the kernel is resized (resize_patch_kernel)
        raise InputError(config_file, "checkpoint does not match the encoder config (checkpoint != ours): "
                         + ", ".join(wrong))


def _read_file(file: Path) -> StateDict:
    try:
        if file.suffix == ".safetensors":
            return load_file(str(file))
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, or pickled objects that weights_only refuses
        raise InputError(file, f"cannot read encoder weights ({type(err).__name__}: {err})") from None
    while isinstance(obj, dict) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[key] for key in _WRAPPERS if isinstance(obj.get(key), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise InputError(file, "not a state dict of tensors (nor one wrapped as teacher/model/state_dict)")
    return {key: value for key, value in obj.items() if isinstance(value, Tensor)}


def _select_encoder(state: StateDict, source: Path) -> tuple[StateDict, list[str], str]:
    """Find the encoder's keys by their CLS token; strip their prefix, ignore everything else."""
    layout, prefixes = "huggingface", _prefixes(state, "embeddings.cls_token")
    if not prefixes:
        layout, prefixes = "original", _prefixes(state, "cls_token")
    if not prefixes:
        raise InputError(source, "no DINOv2 encoder in this file (no cls_token key); "
                         + _listing("found", sorted(state)))
    if len(prefixes) > 1:
        prefixes = [prefix for prefix in prefixes if "teacher" in prefix] or prefixes
        if len(prefixes) > 1:
            raise InputError(source, f"several encoders in this file (key prefixes {prefixes}); keep one")
    prefix = prefixes[0]
    kept = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    return kept, sorted(key for key in state if not key.startswith(prefix)), layout


def _prefixes(state: StateDict, anchor: str) -> list[str]:
    ends = [key for key in state if key == anchor or key.endswith("." + anchor)]
    return sorted({key[: len(key) - len(anchor)] for key in ends})


def _check_geometry(
    state: StateDict, config: EncoderConfig, source: Path, *, heads: dict[int, int]
) -> None:
    """Width and depth from the tensors; the head count from ``heads`` (width -> heads) where known."""
    width = state["embeddings.cls_token"].shape[-1]
    depth = 1 + max((int(m.group(1)) for key in state if (m := _LAYER.match(key))), default=-1)
    problems = []
    if width != config.hidden_size:
        problems.append(f"hidden size {width} != encoder.hidden_size {config.hidden_size}")
    if depth != config.num_layers:
        problems.append(f"{depth} blocks != encoder.num_layers {config.num_layers}")
    if heads.get(width, config.num_heads) != config.num_heads:
        problems.append(f"DINOv2 width {width} has {heads[width]} heads "
                        f"!= encoder.num_heads {config.num_heads}")
    if problems:
        raise InputError(source, "checkpoint does not match the encoder config: " + "; ".join(problems))


def _rename_for(state: StateDict, target: StateDict) -> StateDict:
    """Rename canonical (hub) keys to the installed transformers' names, whichever era it is."""
    modern = any(_RENAMES[0][1] in key for key in target)
    pairs = _RENAMES if modern else tuple((new, old) for old, new in _RENAMES)
    renamed = {}
    for key, value in state.items():
        old, new = next(((old, new) for old, new in pairs if old in key), ("", ""))
        renamed[key.replace(old, new) if old else key] = value
    return renamed


def _listing(label: str, keys: list[str], first: int = 5) -> str:
    shown = ", ".join(keys[:first]) + (f", ... (+{len(keys) - first} more)" if len(keys) > first else "")
    return f"{len(keys)} {label} keys ({shown})"


def save_encoder_as_dinov2(encoder: nn.Module, folder: Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write ``encoder``'s ViT as a Hugging Face ``Dinov2Model`` directory (``config.json`` +
    ``model.safetensors``), the layout DINOv2-S is published in, so it loads back through
    :func:`load_encoder_weights` like real DINOv2 weights. ``dtype`` (e.g. float16) sets the storage."""
    from transformers import Dinov2Config, Dinov2Model

    source = encoder.backbone.config.to_dict()
    keep = {k: source[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio",
                                   "patch_size", "image_size", "layerscale_value", "drop_path_rate",
                                   "layer_norm_eps", "hidden_act", "qkv_bias", "num_channels")}
    model = Dinov2Model(Dinov2Config(**keep, use_mask_token=False)).eval()
    state = {k: v for k, v in encoder.backbone.state_dict().items() if k in model.state_dict()}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ValueError(f"encoder weights do not fill Dinov2Model: missing {result.missing_keys[:5]}")
    if dtype is not None:
        model = model.to(dtype)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
