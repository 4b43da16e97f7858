"""``sskd-deploy serve`` and ``predict``, and the Triton legs other commands take: ``verify --triton``
(:func:`verify_triton`), ``bench --triton`` (:func:`bench_triton`) and the main job's served bench
(:func:`prepare_server`). Application layer: it joins the artifact (export), the repository and
server (serving), the runners (runtime) and the load harness (bench).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sskd_deploy.config.layout import FP32_GRAPH, RunLayout
from sskd_deploy.errors import InputError, SSKDError
from sskd_deploy.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from rich.console import Console

    from sskd_deploy.config import Config
    from sskd_deploy.serving.repository import ServedGraph

GRAPH_FILES = {"fp32": FP32_GRAPH, "fp16": "model_fp16.onnx", "int8": "model_int8.onnx",
               "mixed": "model_int8_mixed.onnx"}
# The INT8 graphs TensorRT takes (symmetric S8, its rules): what the ONNX form serves when the TensorRT
# execution accelerator builds its engine from it (the U8 CPU graph is for ONNX Runtime on x86).
TENSORRT_GRAPH_FILES = {"int8": "model_int8_tensorrt.onnx", "mixed": "model_int8_tensorrt_mixed.onnx"}


def default_artifact(config: Config) -> Path:
    return RunLayout.of(config).export_dir


def served_graph(artifact_dir: Path, precision: str, *, tensorrt: bool = False) -> ServedGraph:
    """The artifact's graph (and engine) of ``precision``, hash-checked against its manifest; ``tensorrt``:
    the INT8 graph made for TensorRT (the ONNX form with the TensorRT accelerator) instead of the CPU one."""
    from sskd_deploy.export.artifact import check_graph_spec, read_manifest, verified_file
    from sskd_deploy.runtime.onnx_metadata import load_onnx, read_onnx_spec
    from sskd_deploy.serving.repository import ServedGraph

    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    name = GRAPH_FILES[precision]
    if tensorrt and TENSORRT_GRAPH_FILES.get(precision) in manifest["files"]:
        name = TENSORRT_GRAPH_FILES[precision]
    if name not in manifest["files"]:
        have = ", ".join(p for p, f in GRAPH_FILES.items() if f in manifest["files"])
        raise InputError(artifact_dir, f"has no {precision} graph ({name}); it has: {have}. Choose one with "
                                       "--precision, or export it")
    path = artifact_dir / name
    digest = verified_file(artifact_dir, manifest, name)
    spec = read_onnx_spec(load_onnx(path, load_weights=False))
    check_graph_spec(path, spec, manifest)
    engine = next((artifact_dir / f for f, e in manifest["files"].items()
                   if e.get("backend") == "tensorrt" and e.get("precision") == precision), None)
    ir = next((f for f, e in manifest["files"].items()
               if e.get("backend") == "openvino" and e.get("precision") == precision), None)
    return ServedGraph(spec=spec, onnx=path, onnx_sha256=digest, precision=precision,
                       export_max_batch=int(manifest["export_config"]["max_batch"]), engine=engine,
                       artifact=str(artifact_dir), openvino=None if ir is None else artifact_dir / ir,
                       openvino_sha256="" if ir is None else verified_file(artifact_dir, manifest, ir))


def prepare_server(config: Config, artifact_dir: Path | None, *, console: Console, any_port: bool = False):
    """Generate (or reuse) the repository and build the server for the artifact's ``serve.precision``
    graph; returns ``(server, model, form, graph)`` with the server not yet started."""
    from sskd_deploy.serving.repository import generate_repository
    from sskd_deploy.serving.server import TritonServer, choose_form, free_port, locate_triton

    s = config.serve
    graph = served_graph(artifact_dir or default_artifact(config), s.precision, tensorrt=s.tensorrt_accelerator)
    repo = generate_repository(graph, s)
    console.print(f"{'generated' if repo['regenerated'] else 'up to date'}: model repository {s.repository} "
                  f"({', '.join(m['name'] for m in repo['models'].values())})")
    install = locate_triton(s.triton_home, s.backend_env)
    form = choose_form(install, s.backend, has_engine=repo["models"]["tensorrt"]["weights"] is not None)
    model = repo["models"][form]["name"]
    ports = {k: (0 if any_port else getattr(s, k)) or free_port(s.host)
             for k in ("grpc_port", "http_port", "metrics_port")}
    log_path = RunLayout.of(config).triton_log
    server = TritonServer(install, Path(s.repository), [model], host=s.host, log_path=log_path,
                          startup_timeout_s=s.startup_timeout_s, **ports)
    console.print(f"starting {install.describe()}")
    return server, model, form, graph


def serve_command(config: Config, artifact_dir: Path | None, *, console: Console,
                  ready: threading.Event | None = None, stop: threading.Event | None = None) -> int:
    """Generate the repository, start ``tritonserver``, wait until the model is ready, serve until
    SIGINT/SIGTERM (or ``stop``), then shut the whole process group down. Returns the exit code."""
    s = config.serve
    server, model, form, graph = prepare_server(config, artifact_dir, console=console)
    ports = {"grpc_port": server.grpc_port, "http_port": server.http_port, "metrics_port": server.metrics_port}
    log_path = server.log_path
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        start = time.perf_counter()
        server.start()
        console.print(f"[green]ready[/green] in {time.perf_counter() - start:.1f} s: model {model} "
                      f"({form} backend, {graph.precision}, max batch {s.max_batch}, {s.instances} instance(s))")
        console.print(f"gRPC {s.host}:{ports['grpc_port']}  HTTP {s.host}:{ports['http_port']}  "
                      f"metrics {s.host}:{ports['metrics_port']}  log {log_path}", soft_wrap=True)
        console.print(f"try: sskd-deploy predict --url {s.host}:{ports['grpc_port']} IMAGE...  (Ctrl-C stops)",
                      soft_wrap=True)
        if ready is not None:
            ready.set()
        while not stop.wait(0.5):
            if server.process is None or server.process.poll() is not None:
                code = None if server.process is None else server.process.returncode
                console.print(f"[red]tritonserver exited unexpectedly (code {code})[/red]\n{server.log_tail()}",
                              soft_wrap=True)
                return 1
        console.print("stopping tritonserver")
        return 0
    finally:
        server.stop()
        server.close_log()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _connect(url: str, model: str | None, artifact_dir: Path | None, *, name: str = "triton"):
    from sskd_deploy.runtime.triton_runner import TritonRunner

    expect = None
    if artifact_dir is not None:
        from sskd_deploy.export.artifact import read_manifest

        expect = read_manifest(Path(artifact_dir))["iospec_sha256"]
    return TritonRunner(url, model, name=name, expect_digest=expect)


def predict_command(url: str, inputs: list[Path], *, out: Path, model: str | None, artifact_dir: Path | None,
                    concurrency: int, batch_size: int, score_threshold: float, overlays: bool,
                    console: Console) -> int:
    """``predict``: images through the server; ``predictions.json`` and overlays in ``out``."""
    from sskd_deploy.serving.predict import expand_inputs, predict_files, write_predictions

    files = expand_inputs(inputs)
    if not files:
        raise SSKDError("predict: no image files given (pass files or folders of images)")
    runner = _connect(url, model, artifact_dir)
    try:
        console.print(f"{url}: model {runner.model} ({runner.info.provider}, {runner.precision}), IOSpec "
                      f"{runner.spec.digest()[:12]}, input {runner.spec.input_size[0]}x{runner.spec.input_size[1]}")
        result = predict_files(runner, files, concurrency=concurrency, batch_size=batch_size,
                               score_threshold=score_threshold)
    finally:
        runner.close()
    path = write_predictions(result, runner.spec.class_names, out, overlays=overlays)
    count = sum(len(i) for i in result.instances)
    rate = len(result.files) / result.seconds if result.seconds > 0 else 0.0
    console.print(f"{len(result.files)} images, {count} instances in {result.seconds:.2f} s ({rate:.1f} img/s, "
                  f"{concurrency} in flight); wrote {path}" + (f" and {out}/overlays/" if overlays else ""),
                  soft_wrap=True)
    for failure in result.failures:
        console.print(f"[red]failed[/red] {failure['file']}: {failure['error']}", soft_wrap=True)
    return 2 if result.failures else 0


def _served_sha(runner: Any) -> str | None:
    return runner.config.get("parameters", {}).get("graph_sha256", {}).get("string_value")


def graph_served_by(runner: Any, artifact_dir: Path, url: str) -> ServedGraph:
    """The artifact graph a Triton model serves, matched by the graph hash in its config: the CPU INT8 graph,
    or TensorRT's when the repository was generated for the TensorRT accelerator. An SSKDError when neither."""
    served = _served_sha(runner)
    graph = served_graph(artifact_dir, runner.precision)
    if served != graph.onnx_sha256 and runner.precision in TENSORRT_GRAPH_FILES:
        alternative = served_graph(artifact_dir, runner.precision, tensorrt=True)
        graph = alternative if alternative.onnx_sha256 == served else graph
    if served == graph.openvino_sha256 and served:  # the python form running the OpenVINO IR
        return graph
    if served != graph.onnx_sha256:
        raise SSKDError(f"{url}: model {runner.model} serves a different {runner.precision} graph than "
                        f"{graph.onnx} (graph hashes differ); regenerate the repository and restart the server")
    return graph


def verify_triton(artifact_dir: Path, url: str, model: str | None, dataset, config: Config, *,
                  console: Console, report_name: str) -> dict[str, Any]:
    """Mask AP and tensors through the server vs the same graph in-process (ONNX Runtime)."""
    from sskd_deploy.export.parity import compare_runners, parity_markdown
    from sskd_deploy.runtime.onnxruntime_runner import OrtRunner

    runner = _connect(url, model, artifact_dir)
    try:
        graph = graph_served_by(runner, Path(artifact_dir), url)
        if graph.openvino is not None and _served_sha(runner) == graph.openvino_sha256:
            from sskd_deploy.runtime.openvino_runner import OpenVINORunner

            local = OpenVINORunner(graph.openvino, threads=config.export.threads, name=f"openvino-{runner.precision}",
                                   precision=config.serve.openvino_precision)
        else:
            local = OrtRunner(graph.onnx, threads=config.export.threads, name=f"onnxruntime-{runner.precision}")
        console.print(f"triton parity: {len(dataset.records)} images of {dataset.name!r}, {runner.model} at {url} "
                      f"vs {local.info.name} in-process")
        report = compare_runners(local, {"triton": runner}, dataset, budgets=config.export.budgets,
                                 batch_size=min(config.export.calibration.batch_size, runner.max_batch),
                                 same_graph=True)
    finally:
        runner.close()
    from sskd_deploy.export.artifact import relocate_runner_paths

    relocate_runner_paths(report["rows"], Path(artifact_dir))
    atomic_write_json(Path(artifact_dir) / f"{report_name}.json", report, indent=2)
    atomic_write_text(Path(artifact_dir) / f"{report_name}.md", parity_markdown(report))
    return report


def bench_triton(url: str, model: str | None, artifact_dir: Path | None, images_for, *, levels: list[int],
                 duration_s: float, threads: int, iters: int, warmup: int, console: Console) -> dict[str, Any]:
    """The Triton section of ``bench``: load levels, and gRPC round trip vs the same graph in-process.

    ``images_for(spec, batch)`` returns a preprocessed uint8 batch for the served IOSpec.
    """
    from sskd_deploy.bench.latency import bench_runners
    from sskd_deploy.bench.load import load_test

    runner = _connect(url, model, artifact_dir)
    try:
        one = images_for(runner.spec, 1)
        console.print(f"[bold]triton[/bold] {runner.model} at {url} ({runner.info.provider}, {runner.precision}); "
                      f"closed-loop load, {duration_s:g} s per level, batch 1 per request")
        load = load_test(runner, one, levels, duration_s=duration_s, log=console.print)
        section: dict[str, Any] = {"url": url, "model": runner.model, "runner": runner.info.to_dict(), "load": load}
        runners = {"triton-grpc": runner}
        if artifact_dir is not None:
            from sskd_deploy.runtime.onnxruntime_runner import OrtRunner

            graph = served_graph(Path(artifact_dir), runner.precision)
            runners = {f"onnxruntime-{runner.precision} (in-process)": OrtRunner(graph.onnx, threads=threads),
                       **runners}
        rows = bench_runners(runners, one, iters=iters, warmup=warmup, log=console.print)
        if artifact_dir is not None:  # the in-process graph by its name in the artifact, like bench's rows
            from sskd_deploy.export.artifact import relocate_runner_paths

            relocate_runner_paths(rows, Path(artifact_dir))
        section["round_trip"] = rows
        if len(rows) == 2:
            section["overhead_p50_ms"] = rows[1]["p50_ms"] - rows[0]["p50_ms"]
            console.print(f"Triton gRPC p50 - in-process ONNX Runtime p50 = {section['overhead_p50_ms']:.2f} ms "
                          "(same graph, same image, batch 1)")
        if len(load) > 1 and "throughput_ips" in load[0] and "throughput_ips" in load[-1]:
            section["throughput_ratio"] = load[-1]["throughput_ips"] / load[0]["throughput_ips"]
            console.print(f"throughput at concurrency {load[-1]['concurrency']} / {load[0]['concurrency']}: "
                          f"{section['throughput_ratio']:.2f}x")
        for r in runners.values():
            if r is not runner:
                r.close()
    finally:
        runner.close()
    return section

