"""Triton Python-backend model: the exported graph run by ONNX Runtime or OpenVINO inside ``tritonserver``.

The repository generator copies this file verbatim to ``<repository>/<name>_python/1/model.py``.
It runs in the server's backend environment, not in sskd-deploy's, so it imports nothing but the
standard library, numpy, the runtime the config names (``onnxruntime`` or ``openvino``, imported
only when chosen) and Triton's ``triton_python_backend_utils``. Everything it needs to know (tensor
names, dtypes, runtime, graph file, thread count, OpenVINO precision hint) comes from the generated
``config.pbtxt``.

OpenVINO compiles the graph once with its dynamic batch dimension. The local runner
(``sskd_deploy.runtime.openvino_runner``) compiles one static-shape model per batch size, which
measured 6-22 % faster; here the batch size of every call is whatever the dynamic batcher formed, and
compiling per size in the request path would stall requests (~1 s per new size on student-tiny).

One ``execute`` call receives the requests Triton's dynamic batcher grouped; they are concatenated
into one graph call and split again. A request that is malformed gets an error response of its
own, and the others in the same batch are still answered: one bad client must not fail its
neighbours or stop the server.
"""

from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

# Triton config type -> numpy dtype, for the tensors this contract uses.
DTYPES = {"TYPE_UINT8": np.uint8, "TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64,
          "TYPE_INT32": np.int32}


def _message(err):
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _open_onnxruntime(path, threads, params):
    """``(run, [(input name, dims without batch)], [output names])`` with ONNX Runtime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads > 0:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # ORT worker threads spin while idle; measured on 2 cores, turning it off ("0") made the
    # round trip slower (p50 16.6 vs 14.1 ms), so the default stays on.
    options.add_session_config_entry("session.intra_op.allow_spinning", params.get("allow_spinning", "1"))
    # as the local runner does (sskd_deploy.runtime.onnxruntime_runner.FP32_DISABLED_OPTIMIZERS): the
    # FP32 graph runs without ORT's NCHWc layout rewrite, which moved trained mask logits by up to 0.28
    disabled = ["NchwcTransformer"] if params.get("precision") == "fp32" else None
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=disabled)
    inputs = [(i.name, tuple(i.shape[1:])) for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]

    def run(names, input_name, batch):
        return session.run(names, {input_name: batch})

    return run, inputs, outputs


def _open_openvino(path, threads, precision_hint):
    """The same triple with OpenVINO's CPU plugin; ``precision_hint`` is ``f32`` or ``bf16``, always set
    (left unset, OpenVINO runs float layers in bf16 on CPUs that have it)."""
    import openvino as ov

    if precision_hint not in ("f32", "bf16"):
        raise ValueError(f"precision_hint must be f32 or bf16, got {precision_hint!r}")
    core = ov.Core()
    model = core.read_model(path)
    settings = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision_hint}
    if threads > 0:
        settings["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(model, "CPU", settings)
    request = compiled.create_infer_request()  # one per model instance: Triton calls execute serially
    inputs = [(i.get_any_name(), tuple(d.get_length() if d.is_static else -1 for d in i.get_partial_shape()[1:]))
              for i in model.inputs]
    outputs = [o.get_any_name() for o in model.outputs]

    def run(names, input_name, batch):
        request.infer({input_name: batch}, share_inputs=True)
        return [np.array(request.get_tensor(name).data) for name in names]  # copies: buffers are reused

    return run, inputs, outputs


RUNTIMES = ("onnxruntime", "openvino")


def _open(runtime, path, threads, params):
    if runtime == "openvino":
        return _open_openvino(path, threads, params.get("precision_hint") or "f32")
    return _open_onnxruntime(path, threads, params)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.max_batch = int(config["max_batch_size"])
        (inp,) = config["input"]
        self.input_name = inp["name"]
        self.input_dtype = DTYPES[inp["data_type"]]
        self.input_dims = tuple(int(d) for d in inp["dims"])
        self.outputs = [(o["name"], DTYPES[o["data_type"]]) for o in config["output"]]

        path = os.path.join(args["model_repository"], args["model_version"], params.get("model_file") or "model.onnx")
        runtime = params.get("runtime") or "onnxruntime"
        if runtime not in RUNTIMES:
            raise pb_utils.TritonModelException(f"runtime {runtime!r} in the config: expected one of {RUNTIMES}")
        threads = int(params.get("intra_op_thread_count") or 0)
        try:
            self._run, graph_inputs, graph_outputs = _open(runtime, path, threads, params)
        except Exception as err:  # noqa: BLE001 - the runtime's own exception classes; say which file and runtime
            raise pb_utils.TritonModelException(f"{path}: {runtime} cannot open the graph ({_message(err)})") from None
        if graph_inputs != [(self.input_name, self.input_dims)]:
            raise pb_utils.TritonModelException(f"{path}: graph inputs {graph_inputs} differ from the config's "
                                                f"{self.input_name} {self.input_dims}")
        missing = [name for name, _ in self.outputs if name not in graph_outputs]
        if missing:  # matched by name below, so order does not matter; a missing name does
            raise pb_utils.TritonModelException(f"{path}: graph outputs {graph_outputs} lack the config's {missing}")

    def _problem(self, tensor):
        """Why this request's input cannot be run, or None. Triton already checks dtype and shape
        against the config; this repeats the checks the graph relies on so a bypass cannot crash it."""
        if tensor is None:
            return f"missing input tensor {self.input_name!r}"
        array = tensor.as_numpy()
        if array.dtype != self.input_dtype:
            return f"{self.input_name}: dtype {array.dtype}, the model takes {np.dtype(self.input_dtype).name}"
        if array.ndim != 1 + len(self.input_dims) or tuple(array.shape[1:]) != self.input_dims:
            return f"{self.input_name}: shape {list(array.shape)}, the model takes [B, {', '.join(map(str, self.input_dims))}]"
        if array.shape[0] == 0:
            return f"{self.input_name}: empty batch"
        if array.shape[0] > self.max_batch:
            return f"{self.input_name}: batch {array.shape[0]} exceeds max_batch_size {self.max_batch}"
        return None

    def execute(self, requests):
        responses = [None] * len(requests)
        arrays, order = [], []
        for i, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
            problem = self._problem(tensor)
            if problem is not None:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(problem))
                continue
            arrays.append(tensor.as_numpy())
            order.append(i)
        if arrays:
            batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            try:
                results = self._run([name for name, _ in self.outputs], self.input_name, batch)
            except Exception as err:  # noqa: BLE001 - any runtime failure becomes an error response, not a dead stub
                for i in order:
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                        f"inference failed: {_message(err)}"))
                return responses
            start = 0
            for i, array in zip(order, arrays):
                stop = start + array.shape[0]
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(result[start:stop]).astype(dtype, copy=False))
                           for (name, dtype), result in zip(self.outputs, results)]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start = stop
        return responses

    def finalize(self):
        self._run = None
