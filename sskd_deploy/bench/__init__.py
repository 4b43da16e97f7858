"""Timing what was built: latency, throughput and load, with the machine they were measured on.

:mod:`~sskd_deploy.bench.models` decides which runners each model gets (an artifact's graphs, presets
with random weights, teacher/student pairs, :mod:`~sskd_deploy.bench.grounded` for Grounded-SAM2),
:mod:`~sskd_deploy.bench.latency` times them (pre/infer/post, p50/p90/p99), :mod:`~sskd_deploy.bench.load`
drives a served model at fixed concurrency, :mod:`~sskd_deploy.bench.roofline` measures the machine's
peaks, :mod:`~sskd_deploy.bench.op_profile` lists a runner's top ops, :mod:`~sskd_deploy.bench.environment`
records the hardware and :mod:`~sskd_deploy.bench.plots` draws the pictures;
:mod:`~sskd_deploy.bench.gpu_check` summarises a ``scripts/gpu_check.sh`` run.

May import: the layers below (base, data, evaluation, models) and deploy (export, runtime, serving);
never training or report.
"""
