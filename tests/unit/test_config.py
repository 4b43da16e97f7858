"""Config loading: defaults, every problem in one error, YAML errors with positions, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from sskd_deploy.config import (
    Config,
    DataConfig,
    DatasetSpec,
    SplitConfig,
    SynthConfig,
    apply_overrides,
    config_from_dict,
    config_hash,
    dump_config,
    load_config,
)
from sskd_deploy.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[2]
OWN_DATA = {
    "labeled": {"kind": "coco", "path": "a/train.json", "images": "a/train"},
    "val": {"kind": "cityscapes", "path": "cs", "split": "val"},
}
UNLABELED = {"kind": "folder", "path": "raw"}


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(excinfo: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return excinfo.value.problems


def test_default_yaml_is_the_embedded_default() -> None:
    assert load_config(REPO / "configs" / "default.yaml") == Config()
    assert load_config(None) == Config()


def test_shipped_long_run_config_loads() -> None:
    config = load_config(REPO / "configs" / "supervised_long.yaml")
    assert tuple(config.train.stages) == ("supervised",) and config.train.supervised.steps == 8000
    assert config.train.eval_every == 500 and config.train.eval_train_images == 100


def test_empty_file_means_all_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "# only a comment\n")) == Config()


def test_values_are_typed(tmp_path: Path) -> None:
    text = "run: {out_dir: runs/x}\ndata:\n  synth: {image_size: [128, 160]}\n"
    config = load_config(write(tmp_path, text))
    assert config.run.out_dir == Path("runs/x") and config.data.synth.image_size == (128, 160)
    assert config.data.synth.num_train == SynthConfig().num_train


def test_every_mistake_is_in_one_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "run:\n  sed: 3\n"  # unknown key at depth 2
        "data:\n  synht: {}\n"  # unknown key at depth 2, another section
        "  synth:\n    num_train: 0\n    num_val: many\n    colour: red\n"  # range, type, unknown at depth 3
        "extra: 1\n",  # unknown top-level section
    )
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    problems = problems_of(excinfo)
    assert set(problems) == {
        "run.sed: unknown key (did you mean 'seed'?)",
        "data.synht: unknown key (did you mean 'synth'?)",
        "data.synth.num_train: must be >= 1 (got 0)",
        "data.synth.num_val: must be an integer (got 'many')",
        "data.synth.colour: unknown key",
        "extra: unknown key (did you mean 'train'?)",
    }
    assert str(path) in str(excinfo.value) and "6 problems" in str(excinfo.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("data: {synth: {labeled_fraction: 0}}", "data.synth.labeled_fraction: must be > 0 (got 0)"),
        ("data: {synth: {labeled_fraction: 1.5}}", "data.synth.labeled_fraction: must be <= 1 (got 1.5)"),
        ("data: {synth: {image_size: [32, 128]}}", "data.synth.image_size[0]: must be >= 64 (got 32)"),
        ("data: {synth: {image_size: [64, 64, 3]}}", "data.synth.image_size: must have at most 2 items"),
        ("data: {synth: {num_train: true}}", "data.synth.num_train: must be an integer (got true)"),
        ("data: {synth: {num_train: '5'}}", "data.synth.num_train: must be an integer (got '5')"),
        ("run: {seed: -1}", "run.seed: must be >= 0 (got -1)"),
        ("run: 3", "run: must be a mapping of keys (got 3)"),
        ("data: {labeled: {kind: voc, path: x}, val: {kind: folder, path: v}}", "data.labeled.kind: must be"),
        ("data: {labeled: {kind: coco}, val: {kind: folder, path: v}}", "data.labeled.path: required key"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(write(tmp_path, text))
    assert any(p.startswith(expected) for p in problems_of(excinfo)), problems_of(excinfo)


def test_malformed_yaml_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "run:\n  seed: 1\ndata:\n  root: [a, b\n  synth: {}\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: invalid YAML at line ") and "column" in message
    assert "line 4, column 9" in message  # where the unclosed list starts


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 3, column 3: duplicate key 'seed'"):
        load_config(write(tmp_path, "run:\n  seed: 1\n  seed: 2\n"))


def test_top_level_must_be_a_mapping_and_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- run\n- data\n"))
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(ValidationError):
        config.run.seed = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.data = DataConfig()  # type: ignore[misc]
    assert hash(config) == hash(Config())


def test_overrides_are_parsed_as_yaml_and_validated() -> None:
    config = apply_overrides(
        Config(),
        ["data.synth.num_train=50", "data.synth.image_size=[128, 128]", "run.out_dir=runs/small",
         "data.labeled.kind=coco", "data.labeled.path=x.json", "data.val={kind: folder, path: imgs}",
         "data.split.labeled_fraction=0.25"],
    )
    assert config.data.synth.num_train == 50 and config.data.synth.image_size == (128, 128)
    assert config.run.out_dir == Path("runs/small")
    assert config.data.labeled == DatasetSpec(kind="coco", path=Path("x.json"))
    assert config.data.split == SplitConfig(labeled_fraction=0.25)
    assert apply_overrides(config, []) is config


def test_bad_overrides_are_reported_together() -> None:
    with pytest.raises(ConfigError) as excinfo:
        apply_overrides(Config(), ["data.synth.num_trian=5", "data.synth.num_val=0"])
    assert problems_of(excinfo) == [
        "data.synth.num_val: must be >= 1 (got 0)",
        "data.synth.num_trian: unknown key (did you mean 'num_train'?)",
    ]
    with pytest.raises(ConfigError) as excinfo:
        apply_overrides(Config(), ["seed", "run.seed.x=1", "run.seed=[1"])
    assert [p.split(":")[0] for p in problems_of(excinfo)] == ["'seed'", "run.seed", "run.seed"]


def test_dump_load_round_trip_and_hash(tmp_path: Path) -> None:
    data = {**OWN_DATA, "split": {"split_file": "s.txt"}}
    config = config_from_dict({"run": {"out_dir": "/abs/out", "seed": 7}, "data": data})
    text = dump_config(config)
    assert "image_size: [192, 256]" in text and "/abs/out" in text
    assert load_config(write(tmp_path, text)) == config
    assert config_hash(load_config(write(tmp_path, text))) == config_hash(config)
    assert config_hash(config) != config_hash(Config()) and len(config_hash(config)) == 64
    default_text = (REPO / "configs" / "default.yaml").read_text()
    assert yaml.safe_load(dump_config(Config())) == yaml.safe_load(default_text)


def test_own_datasets_are_accepted() -> None:
    config = config_from_dict({"data": OWN_DATA})
    assert config.data.labeled is not None and config.data.labeled.images == Path("a/train")
    assert config.data.val is not None and config.data.val.split == "val"
    with_unlabeled = config_from_dict({"data": {**OWN_DATA, "unlabeled": {"kind": "folder", "path": "raw"}}})
    assert with_unlabeled.data.unlabeled is not None


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"labeled": OWN_DATA["labeled"]}, "data: name both labeled and val, or no dataset for"),
        ({"labeled": OWN_DATA["labeled"]}, "(missing val)"),
        ({"unlabeled": {"kind": "folder", "path": "u"}}, "missing labeled and val"),
        ({"split": {"labeled_fraction": 0.1}}, "split divides data.labeled, which is not given"),
        ({**OWN_DATA, "unlabeled": UNLABELED, "split": {"seed": 1}}, "give unlabeled or split, not both"),
        ({**OWN_DATA, "split": {"labeled_fraction": 0.1, "split_file": "s"}}, "data.split: give labeled_"),
        ({**OWN_DATA, "split": {"labeled_fraction": 1.0}}, "data.split.labeled_fraction: must be < 1"),
    ],
)
def test_data_section_rules(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict({"data": data}, source="test.yaml")
    assert any(expected in p for p in problems_of(excinfo)), problems_of(excinfo)


def test_data_rules_reported_alongside_field_errors() -> None:
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict({"data": {"labeled": OWN_DATA["labeled"], "synth": {"num_train": 0}}})
    problems = problems_of(excinfo)
    assert "data.synth.num_train: must be >= 1 (got 0)" in problems
    assert any(p.startswith("data: name both labeled and val") for p in problems)
