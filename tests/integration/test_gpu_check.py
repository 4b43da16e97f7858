"""``scripts/gpu_check.sh --dry-run``: the whole GPU check on the CPU with tiny models (about a minute),
so the one run on a GPU machine does not fail on the script itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from sskd_deploy.runtime.torchao_runner import torchao_unavailable
from tests.grounded_tiny import write_tiny_weights

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.sh"


@pytest.mark.slow
def test_dry_run_exercises_every_step(tmp_path: Path) -> None:
    weights = write_tiny_weights(tmp_path / "gsam")
    out = tmp_path / "check"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out), "--python", sys.executable,
                           "--grounded", str(weights)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = dict(line.split("\t")[:2] for line in (out / "steps.tsv").read_text().splitlines())
    torchao_steps = {"bench_torchao", "bench_parity"}
    for name in ("train_tiny", "train_s", "bench_eager", "bench_pair", "bench_compiled"):
        assert steps[name] == "ok", (name, (out / f"{name}.log").read_text()[-2000:])
    for name in torchao_steps:  # bench.torchao=on: without torchao these fail, naming the extra
        if torchao_unavailable() is None:
            assert steps[name] == "ok", (name, (out / f"{name}.log").read_text()[-2000:])
        else:
            assert steps[name].startswith("failed") and "torchao" in (out / f"{name}.log").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["training"]["tiny"]["steps"] == 3 and summary["training"]["s"]["samples_per_second"] > 0
    (pair,) = summary["bench"]["pair"]["pairs"]
    assert set(pair["teacher_stages_ms"]) == {"grounding_dino", "sam2_image_encoder", "sam2_mask_decoder"}
    assert summary["bench"]["eager"]["complete"] and (out / "summary.md").read_text().startswith("# GPU check")
