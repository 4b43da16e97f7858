"""`model profile`: every phase of a real training step is timed, the matcher apart from the loss."""

from __future__ import annotations

import json

import pytest

from sskd_deploy.cli import main
from sskd_deploy.config import config_from_dict
from sskd_deploy.data.sources import resolve_data
from sskd_deploy.data.synth import generate_synthetic
from sskd_deploy.training.context import TrainContext
from sskd_deploy.training.profile import PHASES, profile_steps


def _config(tmp_path) -> dict:
    synth = {"num_train": 4, "num_val": 2, "labeled_fraction": 0.5, "image_size": [64, 96]}
    generate_synthetic(tmp_path / "data", **synth)
    return {"run": {"out_dir": str(tmp_path / "run")}, "data": {"root": str(tmp_path / "data"), "synth": synth},
            "train": {"input_size": [64, 96], "student_model": {"decoder": {"num_layers": 2}}}}


def test_every_phase_is_timed_and_matching_is_apart_from_the_loss(tmp_path) -> None:
    config = config_from_dict(_config(tmp_path))
    ctx = TrainContext(config=config, data=resolve_data(config.data), root=tmp_path / "run" / "train", device="cpu")
    profile = profile_steps(ctx, steps=2, warmup=1, batch_size=2)
    assert tuple(profile.ms) == PHASES and all(ms > 0 for ms in profile.ms.values()), profile.ms
    assert profile.total_ms == pytest.approx(sum(profile.ms.values()))
    record = profile.to_dict()
    assert record["batch_size"] == 2 and record["steps"] == 2
    assert record["images_per_second"] == pytest.approx(2000 / profile.total_ms, rel=1e-2)
    with pytest.raises(ValueError, match="steps"):
        profile_steps(ctx, steps=0)


def test_profile_command_writes_json_and_refuses_a_bad_role(tmp_path) -> None:
    (tmp_path / "run.yaml").write_text(json.dumps(_config(tmp_path)))
    out = tmp_path / "profile.json"
    args = ["model", "profile", "-c", str(tmp_path / "run.yaml"), "--steps", "1", "--warmup", "0",
            "--batch-size", "1", "--threads", "1"]
    assert main([*args, "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert set(written["ms"]) == set(PHASES) and written["threads"] == 1
    assert main([*args, "--role", "critic"]) != 0
