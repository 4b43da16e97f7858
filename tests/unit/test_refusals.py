"""Commands handed the wrong kind of directory name the one they probably meant, and ``report``
without an argument reports the config's run directory. Directories and manifests are written by
hand: nothing is trained or exported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sskd_deploy.cli import main
from sskd_deploy.errors import InputError
from sskd_deploy.export.artifact import ARTIFACT_FORMAT, RUN_FORMAT, read_manifest


def _run_dir(root: Path, *, export: bool = True) -> Path:
    """A run directory as ``sskd-deploy run`` leaves it, with (or without) an export artifact below."""
    run = root / "runs" / "default"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"format": RUN_FORMAT, "version": 1, "steps": {}}))
    if export:
        (run / "export").mkdir()
        (run / "export" / "manifest.json").write_text(json.dumps({"format": ARTIFACT_FORMAT, "files": {}}))
    return run


def test_a_run_directory_names_its_artifact(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    with pytest.raises(InputError, match=r"not an sskd-deploy artifact manifest \(format 'sskd-deploy/run'\); it "
                                         "looks like a run directory, whose export artifact is .*: pass that") as err:
        read_manifest(run)
    assert str(run / "export") in str(err.value) and "\n" not in str(err.value)


def test_a_run_directory_without_an_export_says_to_export(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, export=False)
    with pytest.raises(InputError, match="it is a run directory without an export artifact: run sskd-deploy export"):
        read_manifest(run)


def test_a_folder_above_an_artifact_without_a_manifest(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    (run / "manifest.json").unlink()
    with pytest.raises(InputError, match="no export manifest here; it looks like a run directory"):
        read_manifest(run)
    with pytest.raises(InputError, match=r"no export manifest here \(an interrupted export .*\); run sskd-deploy export first"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("command", [["serve"], ["verify"], ["bench", "--no-pairs"]])
def test_artifact_commands_given_a_run_directory(
    tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_dir(tmp_path)
    assert main([command[0], str(run), *command[1:]]) == 2
    err = capsys.readouterr().err
    assert "whose export artifact is" in err and f"{run / 'export'}: pass that instead" in err.replace("\n", "")


def test_report_given_an_artifact_names_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_dir(tmp_path)
    assert main(["report", str(run / "export")]) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert f"is an export artifact, not a run directory; its run directory is probably {run}: pass that" in err


def test_report_defaults_to_the_configs_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_dir(tmp_path, export=False)
    assert main(["report", "--set", f"run.out_dir={run}", "--num-overlays", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(run / "report.html") and (run / "report.html").is_file()
    assert f"reporting on {run} (the config's run.out_dir)" in captured.err
    assert main(["report", "--set", f"run.out_dir={tmp_path / 'absent'}"]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_a_run_directory_names_the_artifact_its_config_put_elsewhere(tmp_path: Path) -> None:
    """``export.out_dir`` in the run's recorded config is where its artifact is, not ``<run>/export``."""
    from sskd_deploy.config import config_from_dict, dump_config

    run = _run_dir(tmp_path, export=False)
    elsewhere = tmp_path / "artifacts" / "v1"
    elsewhere.mkdir(parents=True)
    (elsewhere / "manifest.json").write_text(json.dumps({"format": ARTIFACT_FORMAT, "files": {}}))
    config = config_from_dict({"run": {"out_dir": str(run)}, "export": {"out_dir": str(elsewhere)}})
    (run / "config.yaml").write_text(dump_config(config))
    with pytest.raises(InputError, match="it looks like a run directory, whose export artifact is") as err:
        read_manifest(run)
    assert f"{elsewhere}: pass that instead" in str(err.value)
