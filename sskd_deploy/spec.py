"""IOSpec: the deployment contract, from checkpoint to Triton.

Created once from the model config and the class names, then saved in every checkpoint, in the
ONNX metadata and next to the Triton model configuration. Every consumer (runners, exporters,
the Triton config generator, the client) reads names, dtypes and shapes from it instead of
repeating them. Its :meth:`IOSpec.digest` identifies a contract: a client can refuse a server
whose contract differs from the one it was built for.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from sskd_deploy.errors import InputError

SPEC_FORMAT = "sskd-deploy/iospec"
SPEC_VERSION = 1
BATCH = -1  # the batch dimension; every other dimension is static


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor; ``shape`` uses ``-1`` for the (dynamic) batch dimension."""

    name: str
    dtype: str  # numpy dtype name: uint8, float32, float16, int64
    shape: tuple[int, ...]

    def shape_for_batch(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else d for d in self.shape)


@dataclass(frozen=True)
class IOSpec:
    """The contract of a deployed instance-segmentation model.

    Input ``images``: uint8 ``(B, 3, H, W)`` RGB, produced by :func:`sskd_deploy.preprocess.preprocess_batch`
    (aspect-preserving resize, zero padding bottom/right). Outputs, per image, the ``top_k`` best
    queries: ``scores`` float32 ``(B, K)`` = class probability x mean mask probability inside the
    query's binary mask, ``labels`` int64 ``(B, K)`` contiguous class indices, ``mask_logits``
    float32 ``(B, K, H/stride, W/stride)``. Normalisation (``pixel_mean``/``pixel_std``) happens
    inside the graph.
    """

    model_name: str
    class_names: tuple[str, ...]
    input_size: tuple[int, int]
    top_k: int
    mask_stride: int = 4
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    input_name: str = "images"
    output_names: tuple[str, str, str] = ("scores", "labels", "mask_logits")

    def __post_init__(self) -> None:
        h, w = self.input_size
        if h % self.mask_stride or w % self.mask_stride:
            raise ValueError(f"input_size {self.input_size} is not a multiple of mask_stride {self.mask_stride}")
        if not self.class_names:
            raise ValueError("IOSpec needs at least one class name")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def mask_size(self) -> tuple[int, int]:
        return self.input_size[0] // self.mask_stride, self.input_size[1] // self.mask_stride

    @property
    def input(self) -> TensorSpec:
        return TensorSpec(self.input_name, "uint8", (BATCH, 3, *self.input_size))

    @property
    def outputs(self) -> tuple[TensorSpec, TensorSpec, TensorSpec]:
        scores, labels, masks = self.output_names
        k = self.top_k
        return (
            TensorSpec(scores, "float32", (BATCH, k)),
            TensorSpec(labels, "int64", (BATCH, k)),
            TensorSpec(masks, "float32", (BATCH, k, *self.mask_size)),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(format=SPEC_FORMAT, version=SPEC_VERSION)
        return json.loads(json.dumps(data))  # tuples -> lists, a plain JSON tree

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """sha256 of the canonical JSON; equal contracts have equal digests."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "iospec") -> IOSpec:
        if not isinstance(data, dict) or data.get("format") != SPEC_FORMAT:
            raise InputError(source, f"not an IOSpec (format must be {SPEC_FORMAT!r})")
        if data.get("version") != SPEC_VERSION:
            raise InputError(source, f"IOSpec version {data.get('version')!r} is not supported (need {SPEC_VERSION})")
        fields = {k: v for k, v in data.items() if k not in ("format", "version")}
        try:
            spec = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        except (TypeError, ValueError) as err:
            raise InputError(source, f"invalid IOSpec ({err})") from None
        return spec

    @classmethod
    def from_json(cls, text: str, source: str = "iospec") -> IOSpec:
        try:
            return cls.from_dict(json.loads(text), source)
        except json.JSONDecodeError as err:
            raise InputError(source, f"IOSpec is not valid JSON ({err})") from None

    @classmethod
    def from_model_config(cls, config: Any, class_names: tuple[str, ...] | list[str]) -> IOSpec:
        """Build from a :class:`sskd_deploy.config.model.ModelConfig` (duck-typed to keep spec import-light)."""
        if len(class_names) != config.num_classes:
            raise ValueError(f"{len(class_names)} class names for a model with num_classes={config.num_classes}")
        return cls(
            model_name=config.name, class_names=tuple(class_names), input_size=tuple(config.input_size),
            top_k=config.top_k, pixel_mean=tuple(config.pixel_mean), pixel_std=tuple(config.pixel_std),
        )
