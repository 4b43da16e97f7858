"""The run layout (:mod:`sskd_deploy.config.layout`): every path a command, the report or an error message
uses lies under the run directory, except an export directory that ``export.out_dir`` puts elsewhere."""

from __future__ import annotations

from pathlib import Path

from sskd_deploy.config import config_from_dict, dump_config
from sskd_deploy.config.layout import RunLayout, TrainLayout, partial_rows


def _paths(layout: RunLayout) -> dict[str, Path]:
    """Every path the layout names, by what it is."""
    return {
        "config": layout.config_file, "manifest": layout.manifest, "statistics": layout.data_statistics,
        "overlays": layout.data_overlays, "report": layout.report, "train": layout.train_dir,
        "train config": layout.train_config, "summary": layout.train_summary, "stage": layout.stage_dir("student_3"),
        "stage file": layout.stage_file("student_2", "metrics.jsonl"), "init": layout.train.init_dir,
        "init weights": layout.train.init_weights("teacher"), "pseudo": layout.train.pseudo_dir,
        "export": layout.export_dir, "export manifest": layout.export_manifest,
        "parity": layout.export_report(), "parity triton md": layout.export_report("parity_triton", ".md"),
        "fp32 graph": layout.export_fp32_graph, "bench": layout.bench_dir, "latency": layout.bench_latency,
        "triton legacy": layout.bench_triton_legacy, "graphs": layout.bench_graphs, "cache": layout.cache_dir,
        "calibration": layout.calibration_cache, "serve": layout.serve_dir,
        "repository": layout.triton_repository, "triton log": layout.triton_log,
    }


def test_the_default_layout_spells_every_path_under_the_run(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "default"
    layout = RunLayout.of(config_from_dict({"run": {"out_dir": str(run)}}))
    assert layout == RunLayout(run) and layout.default_export
    paths = _paths(layout)
    assert all(p.is_relative_to(run) for p in paths.values()), paths
    assert len(set(paths.values())) == len(paths)  # no two names for one path
    shown = {k: layout.shown(p) for k, p in paths.items()}
    assert shown == {
        "config": "config.yaml", "manifest": "manifest.json", "statistics": "data_statistics.json",
        "overlays": "data_overlays.png", "report": "report.html", "train": "train", "train config": "train/config.yaml",
        "summary": "train/summary.json", "stage": "train/student_3", "stage file": "train/student_2/metrics.jsonl",
        "init": "train/init", "init weights": "train/init/teacher.safetensors", "pseudo": "train/pseudo",
        "export": "export", "export manifest": "export/manifest.json", "parity": "export/parity.json",
        "parity triton md": "export/parity_triton.md", "fp32 graph": "export/model_fp32.onnx", "bench": "bench",
        "latency": "bench/latency.json", "triton legacy": "bench/triton.json", "graphs": "bench/graphs",
        "cache": "cache", "calibration": "cache/calibration", "serve": "serve",
        "repository": "serve/triton_models", "triton log": "serve/tritonserver.log",
    }
    assert layout.export_hint == "runs/<name>/export"
    # the default config: runs/default, relative to the working directory as written
    assert RunLayout.of(config_from_dict({})).export_dir == Path("runs/default/export")


def test_a_configured_export_directory_is_the_only_path_outside_the_run(tmp_path: Path) -> None:
    run, elsewhere = tmp_path / "run", tmp_path / "artifacts" / "v1"
    layout = RunLayout.of(config_from_dict({"run": {"out_dir": str(run)}, "export": {"out_dir": str(elsewhere)}}))
    assert not layout.default_export and layout.export_dir == elsewhere
    outside = {k for k, p in _paths(layout).items() if not p.is_relative_to(run)}
    assert outside == {"export", "export manifest", "parity", "parity triton md", "fp32 graph"}
    assert all(p.is_relative_to(elsewhere) for k, p in _paths(layout).items() if k in outside)
    assert layout.shown(layout.export_report()) == str(elsewhere / "parity.json")  # absolute: not under the run
    assert layout.export_hint == str(elsewhere)


def test_a_run_directory_and_its_recorded_config_place_the_export(tmp_path: Path) -> None:
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    assert RunLayout.at(run) == RunLayout.recorded(run) == RunLayout(run)  # no config: the default place
    config = config_from_dict({"run": {"out_dir": str(tmp_path / "moved")}, "export": {"out_dir": str(elsewhere)}})
    assert RunLayout.at(run, config) == RunLayout(run, elsewhere)  # the directory given wins over run.out_dir
    (run / "train").mkdir()
    (run / "train" / "config.yaml").write_text(dump_config(config))  # `train` alone records only this one
    assert RunLayout.recorded(run).export_dir == elsewhere
    (run / "config.yaml").write_text("export: [not, a, section]\n")  # unreadable: a guess falls back to the default
    assert RunLayout.recorded(run).export_dir == elsewhere
    (run / "train" / "config.yaml").write_text("{")
    assert RunLayout.recorded(run).export_dir == run / "export"


def test_train_layout_and_partial_rows(tmp_path: Path) -> None:
    train = TrainLayout(tmp_path / "anywhere")  # training may be pointed at any folder (tests, profile)
    assert train.stage_file("teacher_1a", "complete.json") == tmp_path / "anywhere" / "teacher_1a" / "complete.json"
    assert RunLayout(tmp_path).train == TrainLayout(tmp_path / "train")
    assert partial_rows(tmp_path / "bench" / "latency.json") == tmp_path / "bench" / "latency.partial.jsonl"
