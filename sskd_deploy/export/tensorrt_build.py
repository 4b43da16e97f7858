"""Build a TensorRT engine from an exported ONNX graph: strongly typed, one batch profile, sidecar JSON.

Precision lives in the graph (DESIGN.md section 3): the network is created ``STRONGLY_TYPED``, so
an FP16 graph gives an FP16 engine and a Q/DQ graph an INT8 engine, and no builder precision flag
(``FP16``, ``INT8``) is ever set: TensorRT may not pick lower-precision kernels than the graph
says, and nothing is downgraded behind the parity report's back. (TensorRT 11 makes strong typing
the only mode and keeps the flag as an ignored no-op, so this call stays valid there.)

The engine file is exactly what ``build_serialized_network`` returned, written atomically; the
IOSpec and the build record go to ``<engine>.json`` (:mod:`sskd_deploy.runtime.tensorrt_common`).
The timing cache, when given, is loaded before and saved (atomically) after each build, which
turns repeated builds on one GPU from minutes into seconds.

API: TensorRT 10 Python bindings (``tensorrt.Builder``, ``OnnxParser``, ``IBuilderConfig``),
imported lazily; without TensorRT the functions raise
:class:`~sskd_deploy.runtime.tensorrt_common.TensorRTUnavailable` with the install command.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sskd_deploy.errors import InputError
from sskd_deploy.io import atomic_write_bytes, atomic_write_json
from sskd_deploy.provenance import hash_bytes, hash_file
from sskd_deploy.runtime.onnx_metadata import META_SPEC, get_metadata, load_onnx, read_precision
from sskd_deploy.runtime.tensorrt_common import (
    ENGINE_FORMAT,
    ENGINE_FORMAT_VERSION,
    Availability,
    TensorRTUnavailable,
    check_io,
    import_tensorrt,
    sidecar_path,
    tensorrt_available,
)
from sskd_deploy.spec import IOSpec

__all__ = ["Availability", "EngineBuildError", "TensorRTUnavailable", "batch_profile", "build_engine",
           "tensorrt_available"]

DEFAULT_WORKSPACE_MB = 2048  # enough for this model family; a Jetson cannot spare TensorRT's default (all memory)


@dataclass(frozen=True)
class ParserIssue:
    """One error of TensorRT's ONNX parser, with the node it points at (``node`` is -1 for graph-level errors)."""

    node: int
    node_name: str
    operator: str
    code: str
    description: str

    def __str__(self) -> str:
        where = f"node {self.node} {self.node_name!r} ({self.operator})" if self.node >= 0 else "graph"
        return f"{where}: {self.description} [{self.code}]"


class EngineBuildError(InputError):
    """An ONNX file TensorRT could not parse or build; ``issues`` holds every parser error."""

    def __init__(self, path: str | Path, problem: str, issues: list[ParserIssue] | None = None) -> None:
        self.issues = list(issues or [])
        super().__init__(path, problem)


def parser_issues(parser: Any) -> list[ParserIssue]:
    """Every error the parser recorded; the first one alone rarely explains an unsupported graph."""
    issues = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        code = error.code()
        issues.append(ParserIssue(node=int(error.node()), node_name=error.node_name() or "",
                                  operator=error.node_operator() or "", code=getattr(code, "name", str(code)),
                                  description=error.desc()))
    return issues


def batch_profile(spec: IOSpec, *, min_batch: int, opt_batch: int, max_batch: int) -> dict[str, Any]:
    """The optimization profile of the IOSpec input: the static ``(3, H, W)`` with the batch range."""
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"batch profile needs 1 <= min <= opt <= max, got {min_batch}/{opt_batch}/{max_batch}")
    tensor = spec.input
    return {"input": tensor.name, "min": list(tensor.shape_for_batch(min_batch)),
            "opt": list(tensor.shape_for_batch(opt_batch)), "max": list(tensor.shape_for_batch(max_batch))}


def _onnx_precision(onnx_path: Path, spec: IOSpec) -> str:
    """The graph's precision from its metadata, after checking it was exported for this IOSpec."""
    model = load_onnx(onnx_path, load_weights=False)
    stored = get_metadata(model).get(META_SPEC)
    if stored is not None and IOSpec.from_json(stored, str(onnx_path)).digest() != spec.digest():
        raise InputError(onnx_path, "the IOSpec in the ONNX metadata differs from the one passed to build_engine")
    return read_precision(model)


def _network_io(network: Any) -> list[tuple[str, bool, str, tuple[int, ...]]]:
    tensors = [(network.get_input(i), True) for i in range(network.num_inputs)]
    tensors += [(network.get_output(i), False) for i in range(network.num_outputs)]
    return [(t.name, is_input, t.dtype.name, tuple(t.shape)) for t, is_input in tensors]


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path, spec: IOSpec) -> Any:
    """A strongly typed network parsed from ``onnx_path``; every parser error in one exception."""
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)  # the network keeps the parser (and the weights it owns) alive
    parsed = parser.parse_from_file(str(onnx_path))
    issues = parser_issues(parser)
    if not parsed or issues:
        listed = "".join(f"\n  - {issue}" for issue in issues) or " (no details; rerun with verbose=True)"
        raise EngineBuildError(onnx_path, f"TensorRT's ONNX parser reported {len(issues)} error(s):{listed}", issues)
    check_io(onnx_path, _network_io(network), spec, partial_shapes=True)
    return network


def _configure(trt: Any, builder: Any, profile: dict[str, Any], workspace_mb: int, timing_cache: Path | None,
               allow_tf32: bool) -> tuple[Any, str]:
    """Builder config with the workspace limit, the batch profile and the timing cache (fresh or loaded)."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if not allow_tf32:  # TF32 is on by default and rounds FP32 matmul inputs to 10 mantissa bits
        config.clear_flag(trt.BuilderFlag.TF32)
    shapes = builder.create_optimization_profile()
    shapes.set_shape(profile["input"], profile["min"], profile["opt"], profile["max"])
    config.add_optimization_profile(shapes)
    state = "none"
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        state = "loaded" if data else "new"
        # ignore_mismatch=False: timings measured on another GPU or TensorRT would mislead tactic choice
        if not config.set_timing_cache(config.create_timing_cache(data), False):
            config.set_timing_cache(config.create_timing_cache(b""), False)
            state = "replaced (built on another GPU or TensorRT version)"
    return config, state


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except (ImportError, RuntimeError, AssertionError):  # informative only: never fail a finished build over it
        return None


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    spec: IOSpec,
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 8,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: str | Path | None = None,
    allow_tf32: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """Build ``engine_path`` (and ``<engine>.json``) from ``onnx_path``; returns the sidecar record.

    ``allow_tf32`` lets TensorRT run the graph's FP32 ops in TF32; off by default, because an op
    the graph keeps in FP32 (FP16 graphs keep their sensitive ops so) should compute in FP32.
    """
    trt = import_tensorrt("building a TensorRT engine")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    precision = _onnx_precision(onnx_path, spec)
    profile = batch_profile(spec, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch)
    cache_path = None if timing_cache is None else Path(timing_cache)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    start = time.perf_counter()
    builder = trt.Builder(logger)
    network = _parse(trt, builder, logger, onnx_path, spec)
    config, cache_state = _configure(trt, builder, profile, workspace_mb, cache_path, allow_tf32)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(onnx_path, "TensorRT could not build an engine from it (its log above says why)")
    engine = bytes(serialized)
    seconds = round(time.perf_counter() - start, 2)
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    record = {
        "format": ENGINE_FORMAT, "version": ENGINE_FORMAT_VERSION, "iospec": spec.to_dict(),
        "iospec_sha256": spec.digest(), "precision": precision, "tensorrt_version": str(trt.__version__),
        "gpu": _gpu_name(), "batch": {"min": min_batch, "opt": opt_batch, "max": max_batch}, "profile": profile,
        "source_onnx": {"name": onnx_path.name, "sha256": hash_file(onnx_path)}, "engine_sha256": hash_bytes(engine),
        "workspace_mb": workspace_mb, "tf32": allow_tf32, "timing_cache": cache_state, "build_seconds": seconds,
    }
    # Engine first, sidecar second: a crash in between leaves an old sidecar whose engine_sha256 no
    # longer matches, which the runner refuses, rather than a sidecar describing a missing engine.
    atomic_write_bytes(engine_path, engine)
    atomic_write_json(sidecar_path(engine_path), record, indent=2)
    return record

