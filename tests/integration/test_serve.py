"""A real ``tritonserver`` on loopback: ``sskd-deploy serve`` in a subprocess on free ports, then the
client, parity, bad requests, ``predict``, ``verify --triton``, ``bench --triton``, and SIGTERM leaving
no process behind. One scenario in one test so one server is started (xdist would split a module)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sskd_deploy.cli import main
from tests.integration.test_export import TINY, _class_names, _student

pytestmark = pytest.mark.slow


def _require_server() -> None:
    from sskd_deploy.serving.server import ServeError, locate_triton

    try:
        locate_triton()
    except ServeError as err:
        if os.environ.get("SSKD_REQUIRE_TRITON"):
            raise  # CI installs the server: a missing one is a failure there, not a skip
        pytest.skip(f"no Triton server installed ({err})")


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline[:160]}")
    return found


def _wait_ready(process: subprocess.Popen, url: str, model: str, timeout_s: float = 120.0) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"serve exited with {process.returncode}:\n{process.stdout.read()}")
            try:
                if client.is_model_ready(model):
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.25)
    finally:
        client.close()
    raise AssertionError("server not ready in time")


def test_serve_predict_verify_bench_and_clean_stop(tmp_path):
    _require_server()
    from sskd_deploy.runtime.onnxruntime_runner import OrtRunner
    from sskd_deploy.runtime.triton_runner import TritonError, TritonRunner
    from sskd_deploy.serving.server import free_port

    repo = tmp_path / "triton_models"
    config = tmp_path / "serve.yaml"
    config.write_text(TINY.format(out=tmp_path / "run", root=tmp_path / "synth")
                      + f"serve: {{repository: {repo}, max_batch: 4, threads: 1}}\n")
    assert main(["run", "--config", str(config)]) == 0
    _student(tmp_path / "run", _class_names(config))
    assert main(["export", "--config", str(config), "--set", "export.int8=false", "--set", "export.fp16=false",
                 "--set", "export.verify=false"]) == 0
    artifact = tmp_path / "run" / "export"

    ports = [free_port() for _ in range(3)]
    url = f"127.0.0.1:{ports[0]}"
    server = subprocess.Popen(
        [sys.executable, "-m", "sskd_deploy.cli", "serve", str(artifact), "--config", str(config),
         "--grpc-port", str(ports[0]), "--http-port", str(ports[1]), "--metrics-port", str(ports[2])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_ready(server, url, "student_tiny_python")
        spec = json.loads((artifact / "manifest.json").read_text())["iospec"]
        h, w = spec["input_size"]

        # parity at tensor level with the same graph in-process
        runner = TritonRunner(url)
        local = OrtRunner(artifact / "model_fp32.onnx", threads=1)
        images = np.random.default_rng(0).integers(0, 256, (3, 3, h, w), dtype=np.uint8)
        for got, want in zip(runner.run(images), local.run(images)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert runner.max_batch == 4 and runner.info.backend == "triton"
        with pytest.raises(TritonError, match="a different model contract"):
            TritonRunner(url, expect_digest="0" * 64)
        with pytest.raises(TritonError, match="not ready"):
            TritonRunner(url, "no_such_model")

        # bad requests: each gets an error response, and the server keeps serving
        bad = {"dtype": images.astype(np.float32), "shape": images[:, :, : h // 2],
               "empty batch": images[:0], "batch over max": np.concatenate([images, images]),
               "oversized image": np.zeros((1, 3, 2 * h, 2 * w), np.uint8)}
        for label, tensor in bad.items():
            with pytest.raises(TritonError):
                runner.infer_raw(tensor)
            ok = runner.run(images[:1])  # still answers
            np.testing.assert_allclose(ok[0], local.run(images[:1])[0], rtol=1e-5, atol=1e-5, err_msg=label)
        runner.close()
        local.close()

        # predict: two images and one undecodable file
        val = sorted((tmp_path / "synth" / "images" / "val").iterdir())[:2]
        junk = tmp_path / "junk.png"
        junk.write_bytes(b"\x89PNG garbage")
        out = tmp_path / "pred"
        assert main(["predict", "--url", url, *map(str, val), str(junk), "--out", str(out), "--concurrency", "2"]) == 2
        predictions = json.loads((out / "predictions.json").read_text())
        assert [Path(i["file_name"]).name for i in predictions["images"]] == [p.name for p in val]
        assert predictions["failures"][0]["file"] == str(junk)
        assert len(list((out / "overlays").glob("*.png"))) == 2

        # verify --triton: AP and tensors through the server equal the local runner's
        assert main(["verify", str(artifact), "--config", str(config), "--triton", url]) == 0
        report = json.loads((artifact / "parity_triton.json").read_text())
        (row,) = [r for r in report["rows"] if r["backend"] == "triton"]
        assert report["ok"] and row["ap_drop"] == 0 and row["tensors"]["max_abs_score_diff"] < 1e-5

        # bench --triton: closed-loop levels, no failed request
        bench = tmp_path / "bench.json"
        assert main(["bench", str(artifact), "--config", str(config), "--triton", url, "--concurrency", "1,3",
                     "--duration", "1", "--iters", "5", "--warmup", "1", "--batch", "1", "--no-compile", "--no-pairs",
                     "--no-roofline", "--out", str(bench)]) == 0
        section = json.loads(bench.read_text())["triton"]
        assert [r["concurrency"] for r in section["load"]] == [1, 3]
        assert all(r["failures"] == 0 and r["requests"] > 0 for r in section["load"])
        assert section["load"][1]["mean_server_batch"] >= 1.0 and "overhead_p50_ms" in section
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    log = server.stdout.read()
    assert code == 0, log
    assert "ready" in log and "stopping tritonserver" in log
    deadline = time.monotonic() + 10
    while _processes_mentioning(str(repo)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(repo)) == []
