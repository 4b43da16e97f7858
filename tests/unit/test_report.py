"""``sskd-deploy report``: one self-contained HTML page from a run directory.

A small run is assembled in a temporary folder: a generated synthetic dataset, a random
student-tiny exported to ONNX, and hand-written JSON for training, parity and the bench in the
formats those steps write. The page must embed every picture as PNG data, carry our AP beside
the paper's rows, turn absent pieces into notes and name a malformed file in its error.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from PIL import Image

from sskd_deploy.cli import main
from sskd_deploy.config import config_from_dict, dump_config
from sskd_deploy.data.image_io import encode_png
from sskd_deploy.data.synth import SYNTH_CLASSES, generate_synthetic
from sskd_deploy.errors import InputError
from sskd_deploy.report import build_report
from sskd_deploy.report.overlays import ImageScore, best_and_worst

# pycocotools' decoder trips a numpy 2 deprecation warning; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

INPUT_SIZE = (64, 96)
SYNTH = {"seed": 1, "num_train": 6, "num_val": 4, "labeled_fraction": 0.5, "image_size": list(INPUT_SIZE)}
STAGE_AP = {"teacher_1a": 0.2512, "teacher_1b": 0.3023, "student_2": 0.3345, "student_3": 0.3467,
            "supervised": 0.1789}
PNG = encode_png(np.full((8, 12, 3), 200, np.uint8))


def _write(path: Path, content: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))


def _tiny_student() -> tuple[object, object, object]:
    from sskd_deploy.config.model import model_preset
    from sskd_deploy.models.maskformer import build_model
    from sskd_deploy.spec import IOSpec

    torch.manual_seed(0)
    config = model_preset("student-tiny").with_classes(len(SYNTH_CLASSES)).updated(input_size=INPUT_SIZE)
    model = build_model(config).eval()
    return model, config, IOSpec.from_model_config(config, SYNTH_CLASSES)


def _config_yaml(run: Path, synth: Path) -> str:
    tree = {"run": {"out_dir": str(run)}, "data": {"root": str(synth), "synth": SYNTH},
            "train": {"input_size": list(INPUT_SIZE)}}
    return dump_config(config_from_dict(tree))


def _training(run: Path) -> None:
    stages = {name: {"ap": ap, "ap50": ap + 0.2, "steps": 20, "train_seconds": 3.5, "role": name.split("_")[0],
                     "final_losses": {"loss": 10.0, "sup": 8.0}} for name, ap in STAGE_AP.items()}
    _write(run / "train/summary.json", {"order": list(STAGE_AP), "stages": stages})
    for i, name in enumerate(STAGE_AP):
        lines = [json.dumps({"step": s, "loss": 30.0 - s - i, "sup": 20.0 - s, "semi": 5.0, "pxl": 3.0, "lr": 1e-3})
                 for s in range(1, 11)]
        _write(run / f"train/{name}/metrics.jsonl", "\n".join(lines) + "\n")
    _write(run / "train/student_3/metrics.jsonl", '{"step": 1, "loss": \n')  # cut short: curves.png instead
    _write(run / "train/student_3/curves.png", PNG)


def _parity_row(runner: str, precision: str, ap: float, **extra: object) -> dict:
    return {"runner": runner, "backend": runner.split("-")[0], "precision": precision, "provider": "CPU",
            "ap": ap, "ap50": ap + 10, **extra}


def _export(run: Path) -> None:
    judged = {"tensors": {"label_agreement": 0.99}, "decisions": {"agreement": 0.97}}
    rows = [_parity_row("torch-fp32", "fp32", 20.0), _parity_row("onnxruntime-fp32", "fp32", 20.0, ok=True,
                                                                 ap_drop=0.0, **judged),
            _parity_row("onnxruntime-int8", "int8", 17.5, ok=False, ap_drop=2.5, **judged),
            _parity_row("onnxruntime-fp16", "fp16", 19.9, ok=True, ap_drop=0.1, **judged)]
    _write(run / "export/parity.json", {"ap_unit": "points (percent)", "split": "val", "images": 4, "rows": rows,
                                        "skipped": [{"runner": "tensorrt-fp16", "reason": "TensorRT is not installed"}],
                                        "budgets": {"int8_ap": 1.0}, "reference": "torch-fp32"})
    served = [_parity_row("onnxruntime-fp32", "fp32", 20.0), _parity_row("triton-grpc", "fp32", 20.0, ok=True,
                                                                         ap_drop=0.0, **judged)]
    _write(run / "export/parity_triton.json", {"rows": served, "reference": "onnxruntime-fp32"})
    _write(run / "export/manifest.json", {"model": "student-tiny", "files": {
        "model_fp32.onnx": {"backend": "onnxruntime", "precision": "fp32", "bytes": 9_000_000}}})


def _bench(run: Path) -> None:
    row = {"model": "<b>student</b>", "runner": "onnxruntime-int8", "batch": 1, "p50_ms": 12.5, "p90_ms": 13.0,
           "p99_ms": None, "pre_ms": {"p50": 0.4, "mean": 0.5}, "post_ms": {"p50": 1.1, "mean": 1.2},
           "e2e_ms": {"p50": 14.25}, "throughput_ips": 80.0, "peak_fraction": 0.123, "peak_name": "cpu.int8"}
    pair = {"teacher": "teacher-tiny", "student": "student-tiny", "input_size": [192, 256], "runner": "torch-fp32",
            "batch": 1, "teacher_p50_ms": 60.0, "student_p50_ms": 15.0, "speedup": 4.0}
    triton = {"model": "student_tiny_python", "load": [{"concurrency": 4, "requests": 321, "failures": 0,
                                                        "p50_ms": 48.5, "throughput_ips": 82.0}]}
    _write(run / "bench/latency.json", {
        "format": "sskd-deploy/bench", "version": 2, "settings": {"batches": [1, 2], "threads": 2},
        "environment": {"cpu": "Test CPU", "cpu_count": 2, "gpu": None}, "versions": {"onnxruntime": "1.32.0"},
        "peaks": {"cpu": {"fp32_gflops": 90.1, "int8_gops": 250.3, "memory_gbps": 8.2}}, "rows": [row],
        "pairs": [pair], "skipped": [{"model": "student-s", "runner": "tensorrt", "reason": "no GPU"}],
        "plots": {"latency": "latency.png", "roofline": "roofline.png"}, "triton": triton})
    _write(run / "bench/latency.png", PNG)  # roofline.png left out on purpose


def _manifest(run: Path) -> None:
    _write(run / "manifest.json", {
        "config_hash": "c0ffee" * 10, "data_hash": "da7a" * 16, "versions": {"torch": "2.13.0+cpu"},
        "environment": {"cpu": "Test CPU", "cpu_count": 2, "affinity": 2, "platform": "Linux-test"},
        "steps": {"data": {"seconds": 0.5, "source": {"origin": "synthetic:test"}}, "train": {"seconds": 12.0}}})


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report_data") / "synth"
    generate_synthetic(root, **{**SYNTH, "image_size": INPUT_SIZE})
    return root


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, synth: Path) -> Path:
    """Every piece a finished run has, the FP32 graph exported from a random student."""
    from sskd_deploy.export.onnx_export import export_onnx
    from sskd_deploy.models.deploy import DeployWrapper

    run = tmp_path_factory.mktemp("report_run")
    model, _, spec = _tiny_student()
    export_onnx(DeployWrapper(model=model, spec=spec).eval(), run / "export/model_fp32.onnx",
                checkpoint_sha256="0" * 64)
    _write(run / "config.yaml", _config_yaml(run, synth))
    _manifest(run)
    _write(run / "data_statistics.json", {"val": {"images": 4, "instances": 17, "instances_per_class": {"disc": 3},
                                                  "sizes": {"small": 10, "medium": 7, "large": 0}}})
    _write(run / "data_overlays.png", PNG)
    _training(run)
    _export(run)
    _bench(run)
    return run


@pytest.fixture(scope="module")
def page(full_run: Path) -> str:
    logged: list[str] = []
    written = build_report(full_run, num_overlays=2, log=logged.append)
    assert written == full_run / "report.html" and any("scoring 4 val images" in line for line in logged)
    return written.read_text(encoding="utf-8")


def _row(html: str, label: str) -> str:
    """The table row (``<tr>...</tr>``) that contains ``label``."""
    match = re.search(r"<tr>(?:(?!</tr>).)*?" + re.escape(label) + r".*?</tr>", html, re.DOTALL)
    assert match, f"no table row with {label!r}"
    return match.group(0)


def test_every_image_is_embedded_png_and_nothing_is_fetched(page: str) -> None:
    images = re.findall(r"<img\b[^>]*>", page)
    # data overlays, the combined curves, student_3's curves.png, 2 best + 2 worst pairs, the latency plot
    assert len(images) == 8
    for img in images:
        src = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', img)
        assert src, img[:80]
        Image.open(io.BytesIO(base64.b64decode(src.group(1)))).verify()
    for forbidden in ('src="http', 'href="http', "file:", "<script", "<link"):
        assert forbidden not in page


def test_stage_table_carries_our_ap_beside_the_paper(page: str) -> None:
    assert "synthetic CPU demo" in page
    final = _row(page, "student after stage 3")
    assert all(value in final for value in ("student_3", "34.67", "54.67", "33.9", "58.7", "16.7", "28.0"))
    assert "30.23" in _row(page, "teacher, adapted (stage 1)")
    zero_shot = _row(page, "zero-shot teacher")
    assert "22.0" in zero_shot and zero_shot.count("\u2014") == 3  # no stage of ours: stage, AP, AP50
    assert "Order by AP in this run: </strong>student_3 (34.67) &gt; student_2 (33.45)" in page
    assert "student_3: curves.png written by training" in page  # its metrics.jsonl is cut short


def test_parity_latency_and_triton_tables(page: str) -> None:
    assert "FAIL" in _row(page, "onnxruntime-int8</td><td>onnxruntime") and "2.500" in page
    assert "skipped" in _row(page, "tensorrt-fp16") and "TensorRT is not installed" in page
    assert "onnxruntime-fp32" in _row(page, "triton-grpc")  # judged against the in-process graph
    latency = _row(page, "&lt;b&gt;student&lt;/b&gt;")  # a name from a file is text, never markup
    assert all(v in latency for v in ("12.50", "0.40", "1.10", "14.25", "12.3", "cpu.int8"))
    assert "<b>student</b>" not in page
    assert "350.9" in page and "4.56x" in _row(page, "paper: adapted VFM teacher") and "4.00x" in page
    assert "48.50" in _row(page, "321") and "bench/roofline.png missing" in page
    assert "none" in _row(page, "GPU") and "Test CPU" in page


def test_missing_pieces_become_notes(tmp_path: Path) -> None:
    _manifest(tmp_path)
    html = build_report(tmp_path, out=tmp_path / "r.html", log=lambda _: None).read_text()
    for absent in ("train/summary.json", "export/parity.json", "bench/latency.json", "data_statistics.json",
                   "config.yaml", "export/manifest.json"):
        assert f"not available: <code>{absent}</code> missing" in html, absent
    assert "<img" not in html and "Test CPU" in html


@pytest.mark.parametrize(("rel", "content"), [("bench/latency.json", "{oops"), ("train/summary.json", "[1, 2]"),
                                              ("export/parity.json", '{"rows": 3}'), ("manifest.json", "")])
def test_malformed_json_names_the_file(tmp_path: Path, rel: str, content: str) -> None:
    _manifest(tmp_path)
    _write(tmp_path / rel, content)
    with pytest.raises(InputError) as err:
        build_report(tmp_path, log=lambda _: None)
    assert err.value.path == str(tmp_path / rel)
    assert not (tmp_path / "report.html").exists()


def test_a_folder_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a run directory"):
        build_report(tmp_path)
    with pytest.raises(InputError, match="no such run directory"):
        build_report(tmp_path / "absent")


def test_without_an_export_the_latest_student_checkpoint_is_drawn(tmp_path: Path, synth: Path) -> None:
    from sskd_deploy.models.checkpoint import save_checkpoint

    model, config, spec = _tiny_student()
    save_checkpoint(tmp_path / "train/student_3/model.safetensors", model=model, config=config, spec=spec)
    _write(tmp_path / "config.yaml", _config_yaml(tmp_path, synth))
    html = build_report(tmp_path, num_overlays=1, log=lambda _: None).read_text()
    assert "train/student_3/model.safetensors (PyTorch)" in html
    assert len(re.findall(r"<img\b", html)) == 2  # one best, one worst


def test_the_export_is_read_where_the_runs_config_put_it(tmp_path: Path, full_run: Path, synth: Path) -> None:
    """``export.out_dir`` outside the run: the parity tables, the artifact and the drawn model come from there."""
    import shutil

    run, elsewhere = tmp_path / "run", tmp_path / "artifacts" / "v1"
    _manifest(run)
    tree = {"run": {"out_dir": str(run)}, "data": {"root": str(synth), "synth": SYNTH},
            "train": {"input_size": list(INPUT_SIZE)}, "export": {"out_dir": str(elsewhere)}}
    _write(run / "config.yaml", dump_config(config_from_dict(tree)))
    html = build_report(run, num_overlays=0, log=lambda _: None).read_text()
    assert f"not available: <code>{elsewhere / 'parity.json'}</code> missing" in html  # named where it belongs
    assert f"sskd-deploy verify {elsewhere}</code>" in html and "export/parity.json" not in html
    shutil.copytree(full_run / "export", elsewhere)
    html = build_report(run, num_overlays=1, log=lambda _: None).read_text()
    assert "17.50" in _row(html, "onnxruntime-int8") and "student_tiny_python" not in html
    assert "48.50" not in html and "not available: <code>bench/latency.json</code> missing" in html
    assert "model_fp32.onnx" in _row(html, "9.00") and "parity.json</code> missing" not in html
    assert f"Model {elsewhere / 'model_fp32.onnx'} (ONNX Runtime)" in html


def test_cli_prints_the_path(full_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "page.html"
    assert main(["report", str(full_run), "--out", str(out), "--num-overlays", "0"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert "not drawn: --num-overlays 0" in out.read_text()
    assert main(["report", str(tmp_path / "absent")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["report", str(full_run), "--num-overlays", "-1"]) == 2  # a usage error, not a traceback
    assert "--num-overlays" in capsys.readouterr().err


def test_best_and_worst_never_show_an_image_twice() -> None:
    scores = [ImageScore(i, ap, None) for i, ap in enumerate([0.5, 0.1, 0.9, 0.0, 0.3])]
    best, worst = best_and_worst(scores, 2)
    assert [s.index for s in best] == [2, 0] and [s.index for s in worst] == [3, 1]
    best, worst = best_and_worst(scores[:3], 2)
    assert [s.index for s in best] == [2, 0] and [s.index for s in worst] == [1]


def test_importing_the_report_loads_no_model_runtime() -> None:
    code = "import sys, sskd_deploy.report; bad = [m for m in ('torch', 'onnxruntime') if m in sys.modules]; " \
           "assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_paper_table_shows_the_zero_shot_teacher_row() -> None:
    from sskd_deploy.report.training import _paper_table

    with_zero_shot = str(_paper_table({"teacher_1a": {"ap": 0.3, "ap50": 0.5, "zero_shot_ap": 0.1234,
                                                      "zero_shot_ap50": 0.25}}))
    assert "teacher_1a, before training" in with_zero_shot and "12.34" in with_zero_shot
    assert "before training" not in str(_paper_table({"teacher_1a": {"ap": 0.3, "ap50": 0.5}}))
    # a whole pretrained student's starting point gets its own row (the paper has none: its student starts
    # from an encoder), only when the run measured it
    student = str(_paper_table({"supervised": {"ap": 0.3, "zero_shot_ap": 0.2468, "zero_shot_ap50": 0.4}}))
    assert "supervised, before training" in student and "24.68" in student
    assert "student, zero-shot" not in str(_paper_table({"supervised": {"ap": 0.3}}))


def test_stages_trained_on_the_withheld_truth_are_flagged() -> None:
    from sskd_deploy.report.training import _truth_note

    stages = {"student_2": {"ap": 0.3, "pseudo_labels": "truth"}, "student_3": {"ap": 0.31}}
    note = str(_truth_note(["student_2", "student_3"], stages))
    assert "student_2 trained on the withheld ground truth" in note and "student_3" not in note
    assert _truth_note(["student_2"], {"student_2": {"ap": 0.3}}) is None
