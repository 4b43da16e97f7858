"""A small stand-in for the ``tensorrt`` module: the calls ``build_engine`` makes, nothing else.

Names and semantics follow the TensorRT 10 Python bindings (``python/src/infer/pyCore.cpp`` and
``python/src/parsers/pyOnnx.cpp`` of NVIDIA/TensorRT): ``create_network(flags)``, ``OnnxParser`` with
``parse_from_file``/``num_errors``/``get_error``, errors with ``code()``/``desc()``/``node()``/
``node_name()``/``node_operator()``, ``create_timing_cache(bytes)`` and ``set_timing_cache`` refusing a
cache from another device. The "engine" it builds is JSON describing what it was asked to build,
so tests can check the flags, the profile and the workspace. It has no ``set_flag``: strong typing
forbids builder precision flags, and calling one must fail.
"""

from __future__ import annotations

import enum
import json
import types

import onnx
from onnx import TensorProto

ONNX_TO_TRT = {TensorProto.FLOAT: "FLOAT", TensorProto.FLOAT16: "HALF", TensorProto.UINT8: "UINT8",
               TensorProto.INT64: "INT64", TensorProto.INT32: "INT32", TensorProto.BOOL: "BOOL"}


class FakeTensorRT(types.ModuleType):
    """The subset of the TensorRT 10 Python API ``build_engine`` uses. ``unsupported`` ONNX op types
    make the parser report one error per node, as the real parser does for unsupported nodes."""

    __version__ = "10.9.0"
    DataType = enum.Enum("DataType", "FLOAT HALF INT8 INT32 BOOL UINT8 INT64")
    MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1})
    BuilderFlag = enum.IntEnum("BuilderFlag", {"FP16": 0, "INT8": 1, "TF32": 6})
    ErrorCode = enum.IntEnum("ErrorCode", {"UNSUPPORTED_NODE": 8})

    def __init__(self, unsupported: tuple[str, ...] = ()) -> None:
        super().__init__("tensorrt")
        fake = self

        class Logger:
            VERBOSE, INFO, WARNING, ERROR = 4, 3, 2, 1

            def __init__(self, min_severity: int = 2) -> None:
                self.min_severity = min_severity

        class Builder:
            def __init__(self, logger: Logger) -> None:
                self.logger = logger

            def create_network(self, flags: int = 0) -> types.SimpleNamespace:
                net = types.SimpleNamespace(flags=flags, inputs=[], outputs=[])
                net.get_input, net.get_output = net.inputs.__getitem__, net.outputs.__getitem__
                return net

            def create_builder_config(self) -> FakeConfig:
                return FakeConfig()

            def create_optimization_profile(self) -> FakeProfile:
                return FakeProfile()

            def build_serialized_network(self, network, config) -> bytes:
                if config.cache is not None:
                    config.cache.entries.append(b"tactic")
                return json.dumps({"flags": network.flags, "profiles": [p.shapes for p in config.profiles],
                                   "pools": config.pools, "cleared": sorted(config.cleared)}).encode()

        class OnnxParser:
            def __init__(self, network, logger: Logger) -> None:
                self.network, self.errors = network, []

            def parse_from_file(self, path: str) -> bool:
                graph = onnx.load(path, load_external_data=False).graph
                for values, target in ((graph.input, self.network.inputs), (graph.output, self.network.outputs)):
                    for v in values:
                        dims = tuple(d.dim_value if not d.dim_param else -1 for d in v.type.tensor_type.shape.dim)
                        dtype = fake.DataType[ONNX_TO_TRT[v.type.tensor_type.elem_type]]
                        target.append(types.SimpleNamespace(name=v.name, dtype=dtype, shape=dims))
                self.network.num_inputs, self.network.num_outputs = len(graph.input), len(graph.output)
                self.errors = [FakeParserError(i, n) for i, n in enumerate(graph.node) if n.op_type in unsupported]
                return not self.errors

            @property
            def num_errors(self) -> int:
                return len(self.errors)

            def get_error(self, index: int) -> FakeParserError:
                return self.errors[index]

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser


class FakeParserError:
    def __init__(self, index: int, node: onnx.NodeProto) -> None:
        self._index, self._node = index, node

    def code(self):
        return FakeTensorRT.ErrorCode.UNSUPPORTED_NODE

    def desc(self) -> str:
        return f"No importer registered for op: {self._node.op_type}"

    def node(self) -> int:
        return self._index

    def node_name(self) -> str:
        return self._node.name

    def node_operator(self) -> str:
        return self._node.op_type


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, list] = {}

    def set_shape(self, name: str, min, opt, max) -> None:
        self.shapes[name] = [list(min), list(opt), list(max)]


class FakeTimingCache:
    def __init__(self, data: bytes) -> None:
        self.entries = [line for line in bytes(data).split(b"\n") if line]

    def serialize(self) -> bytes:
        return b"\n".join(self.entries)


class FakeConfig:
    """No ``set_flag``: a builder precision flag would fail loudly here, as strong typing forbids them."""

    def __init__(self) -> None:
        self.pools, self.profiles, self.cache, self.cleared = {}, [], None, set()

    def set_memory_pool_limit(self, pool, pool_size: int) -> None:
        self.pools[pool.name] = pool_size

    def clear_flag(self, flag) -> None:
        self.cleared.add(flag.name)

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> FakeTimingCache:
        return FakeTimingCache(serialized_timing_cache)

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        if cache.entries[:1] == [b"other-gpu"] and not ignore_mismatch:  # the real verification header check
            return False
        self.cache = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache | None:
        return self.cache
