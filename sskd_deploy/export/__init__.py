"""Compiling a trained student into deployable forms, and the gate that checks them.

From one checkpoint, :mod:`~sskd_deploy.export.artifact` writes an artifact directory: the ONNX FP32
graph (:mod:`~sskd_deploy.export.onnx_export`), its FP16 twin (:mod:`~sskd_deploy.export.fp16`), INT8
Q/DQ graphs per target calibrated on unlabeled images (:mod:`~sskd_deploy.export.calibration`,
:mod:`~sskd_deploy.export.int8`, :mod:`~sskd_deploy.export.qdq_graph`, checked against TensorRT's
rules by :mod:`~sskd_deploy.export.qdq_rules`), the AP-budgeted mixed-precision search
(:mod:`~sskd_deploy.export.mixed_precision`), the OpenVINO IR (:mod:`~sskd_deploy.export.openvino_int8`),
TensorRT engines where TensorRT exists (:mod:`~sskd_deploy.export.tensorrt_build`,
:mod:`~sskd_deploy.export.torch_tensorrt`), and the parity gate (:mod:`~sskd_deploy.export.parity`)
that runs every form against PyTorch on the val split.

May import: the base layer (config, errors, io, spec, evaluation, ...), ``data``, ``models`` and
``runtime`` (the gate runs each form through its Runner); never training, serving, bench, report or
the commands.
"""
