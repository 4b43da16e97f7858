"""Serving an artifact on NVIDIA Triton and querying it.

:mod:`~sskd_deploy.serving.repository` generates the model repository from the artifact's IOSpec
(ONNX Runtime, TensorRT, OpenVINO and Python-backend forms; no config written by hand),
:mod:`~sskd_deploy.serving.server` finds and runs ``tritonserver`` until the model is ready, and
:mod:`~sskd_deploy.serving.predict` is the client: image files to concurrent gRPC requests to
instances, COCO JSON and overlays.

May import: the base layer (config, errors, io, spec, preprocess, postprocess, ...) and ``runtime``;
never models, training, export, bench, report or the commands, and not torch (a serving host need
not have it).
"""
