"""One :class:`~sskd_deploy.runtime.base.Runner` interface over every inference backend.

A runner takes the preprocessed uint8 batch the IOSpec describes and returns its three outputs, so
parity, bench, the report and the client treat PyTorch (eager, compiled, torchao), ONNX Runtime,
OpenVINO, TensorRT and a Triton-served model the same way. The deploy contract travels inside the
files (:mod:`~sskd_deploy.runtime.onnx_metadata`, :mod:`~sskd_deploy.runtime.openvino_metadata`) and
each runner checks it before it runs anything.

May import: the base layer and ``models`` (the PyTorch runners wrap the deploy module); never
training, export, serving, bench, report or the commands.
"""
