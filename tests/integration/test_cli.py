"""The command line end to end on small generated data: every data command, eval, config check,
the main job, and the way user errors surface (one line, exit code 2, nothing left behind)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sskd_deploy.cli import main

SMALL = ["--num-train", "12", "--num-val", "4", "--labeled-fraction", "0.25", "--image-size", "96x128"]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "synth"
    assert main(["data", "synth", "--out", str(out), "--seed", "3", *SMALL]) == 0
    return out


def test_help_lists_commands() -> None:
    exe = Path(sys.executable).with_name("sskd-deploy")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sskd_deploy.cli"]
    done = subprocess.run([*cmd, "--help"], capture_output=True, text=True, check=True)
    for name in ("run", "data", "eval", "config"):
        assert name in done.stdout


def test_synth_writes_the_layout(synth_dir: Path) -> None:
    manifest = json.loads((synth_dir / "dataset.json").read_text())
    assert manifest["generator"]["num_train"] == 12
    labeled = json.loads((synth_dir / "annotations" / "train_labeled.json").read_text())
    unlabeled = json.loads((synth_dir / "annotations" / "train_unlabeled.json").read_text())
    assert len(labeled["images"]) == 3 and len(unlabeled["images"]) == 9
    assert "annotations" not in unlabeled
    assert not list(synth_dir.parent.glob("*.partial"))


def test_synth_refuses_to_overwrite_without_force(synth_dir: Path, capsys) -> None:
    assert main(["data", "synth", "--out", str(synth_dir), *SMALL]) == 2
    assert str(synth_dir) in capsys.readouterr().err


def test_check_and_show(synth_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["data", "check", str(synth_dir)]) == 0
    assert "ok" in capsys.readouterr().out
    out = tmp_path / "show.png"
    assert main(["data", "show", str(synth_dir), "--out", str(out), "--split", "val", "--num", "4"]) == 0
    from PIL import Image

    with Image.open(out) as img:
        assert img.width > 128 and img.height >= 96


def test_check_lists_problems(synth_dir: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(synth_dir, broken)
    first = sorted((broken / "images" / "val").iterdir())[0]
    first.write_bytes(first.read_bytes()[:60])  # truncated PNG
    second = sorted((broken / "images" / "val").iterdir())[1]
    second.unlink()
    assert main(["data", "check", str(broken)]) == 1
    out = capsys.readouterr().out
    assert first.name in out and second.name in out


def _results_from_gt(gt: dict) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"], "score": 1.0}
        for a in gt["annotations"]
    ]


def test_eval_perfect_and_empty(synth_dir: Path, tmp_path: Path) -> None:
    gt_path = synth_dir / "annotations" / "val.json"
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(_results_from_gt(json.loads(gt_path.read_text()))))
    out = tmp_path / "metrics.json"
    assert main(["eval", "--pred", str(pred), "--gt", str(gt_path), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["ap"] == pytest.approx(1.0)
    pred.write_text("[]")
    assert main(["eval", "--pred", str(pred), "--gt", str(gt_path), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["ap"] == 0.0


def test_eval_bad_prediction_file(synth_dir: Path, tmp_path: Path, capsys) -> None:
    pred = tmp_path / "pred.json"
    pred.write_text("{not json")
    gt_path = synth_dir / "annotations" / "val.json"
    assert main(["eval", "--pred", str(pred), "--gt", str(gt_path)]) == 2
    err = capsys.readouterr().err
    assert "pred.json" in err and len(err.strip().splitlines()) == 1


def test_config_check_reports_every_problem(tmp_path: Path, capsys) -> None:
    good = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"
    assert main(["config", "check", str(good), "--quiet"]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  seeed: 1\ndata:\n  synth:\n    num_train: 0\n    image_size: [10, 256]\n")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "seeed" in err and "num_train" in err and "image_size" in err


def test_run_main_job(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["run", "--set", "run.out_dir=out", "--set", "data.root=ds", "--set", "data.synth.num_train=10",
            "--set", "data.synth.num_val=4", "--set", "data.synth.image_size=[96,128]",
            "--set", "data.synth.labeled_fraction=0.2", "--set", "run.steps=[]"]
    assert main(args) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["steps"]["check"]["problems"] == 0
    assert (tmp_path / "out" / "data_overlays.png").stat().st_size > 0
    stats = json.loads((tmp_path / "out" / "data_statistics.json").read_text())
    assert stats["labeled"]["images"] == 2 and stats["unlabeled"]["images"] == 8
    # a second run reuses the dataset and reaches the same data hash
    assert main(args) == 0
    assert "reusing" in capsys.readouterr().out
    again = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert again["data_hash"] == manifest["data_hash"]


def test_run_refuses_foreign_data_root(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    assert main(["run", "--set", "data.root=mine", "--set", "run.out_dir=out"]) == 2
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"
    assert "mine" in capsys.readouterr().err


def test_bad_input_exit_codes(tmp_path: Path, capsys) -> None:
    (tmp_path / "x.json").write_text('{"images": [{"id": 1, "file_name": "../../etc/passwd", "height": 4, "width": 4}],'
                                     ' "categories": [{"id": 1, "name": "a"}], "annotations": []}')
    assert main(["data", "show", str(tmp_path / "x.json"), "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "x.json" in err and "escape" in err
    assert not (tmp_path / "o.png").exists()


def test_model_info(tmp_path: Path, capsys) -> None:
    out = tmp_path / "info.json"
    assert main(["model", "info", "student-tiny", "--input-size", "64x96", "--num-classes", "3", "--iters", "1",
                 "--json", str(out)]) == 0
    info = json.loads(out.read_text())
    assert info["input_size"] == [64, 96] and info["parameters"]["total"] > 1e6 and info["gflops"] > 0
    assert "GFLOPs" in capsys.readouterr().out
    assert main(["model", "info", "student-xxl"]) == 2
    assert "unknown preset" in capsys.readouterr().err
