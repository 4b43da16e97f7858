"""The run directory's layout: every path a command, the report or an error message uses, named once.

A run directory (``run.out_dir``, ``runs/default`` by default) holds::

    config.yaml               the resolved config (``run``)
    manifest.json             the run manifest (``run``)
    data_statistics.json      dataset statistics per role (``run``)
    data_overlays.png         ground-truth overlays of the val split (``run``)
    report.html               the HTML report (``report``)
    train/                    config.yaml, summary.json, init/<role>.safetensors, pseudo/,
                              <stage>/ (model.safetensors, eval.json, metrics.jsonl, curves.png, complete.json)
    export/                   the export artifact, unless ``export.out_dir`` puts it elsewhere
    bench/                    latency.json (and its .csv, plots, profiles), graphs/ (the --model presets)
    cache/calibration/        the INT8 calibration cache
    serve/                    triton_models/ (the main job's repository), tritonserver.log

:class:`RunLayout` answers every one of these from a :class:`~sskd_deploy.config.Config`
(:meth:`RunLayout.of`) or from a run directory and, when it has one, its resolved config
(:meth:`RunLayout.at`). The export directory is the only one that may lie outside the run.
Base layer: it imports nothing but the config package, and that only inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sskd_deploy.config.run import Config

# files of the run directory itself
CONFIG = "config.yaml"
MANIFEST = "manifest.json"  # the run manifest, and the export artifact's manifest inside its directory
DATA_STATISTICS = "data_statistics.json"
DATA_OVERLAYS = "data_overlays.png"
REPORT = "report.html"
# folders of the run directory
TRAIN = "train"
EXPORT = "export"
BENCH = "bench"
CACHE = "cache"
SERVE = "serve"
# inside train/
SUMMARY = "summary.json"
INIT = "init"
PSEUDO = "pseudo"
# inside a stage folder train/<stage>/
CHECKPOINT = "model.safetensors"
EVAL = "eval.json"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
COMPLETE = "complete.json"
# inside the export artifact: the files the run's other steps and the report read by name
FP32_GRAPH = "model_fp32.onnx"
PARITY = "parity"  # the gate's report stem: parity.json, parity.md
PARITY_TRITON = "parity_triton"  # verify --triton's: parity_triton.json, parity_triton.md
# inside bench/
LATENCY = "latency.json"
PARTIAL_ROWS = ".partial.jsonl"  # latency.partial.jsonl: the rows measured so far, removed once the result is written
TRITON_LEGACY = "triton.json"  # the load test as an older bench wrote it, beside latency.json
GRAPHS = "graphs"
# inside cache/ and serve/
CALIBRATION = "calibration"
TRITON_REPOSITORY = "triton_models"
TRITON_LOG = "tritonserver.log"
DEFAULT_EXPORT_HINT = f"runs/<name>/{EXPORT}"  # how help and report hints spell the default artifact


def partial_rows(result: Path) -> Path:
    """Where a bench writing ``result`` keeps each row as it is measured (``latency.partial.jsonl``)."""
    return result.with_name(result.stem + PARTIAL_ROWS)


@dataclass(frozen=True)
class TrainLayout:
    """The training folder ``root`` (``<run>/train``; a test or a tool may put it anywhere)."""

    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def stage_file(self, stage: str, name: str) -> Path:
        return self.stage_dir(stage) / name

    @property
    def init_dir(self) -> Path:
        return self.root / INIT

    def init_weights(self, role: str) -> Path:
        """theta_0 of ``role`` (``student``, ``teacher``)."""
        return self.init_dir / f"{role}.safetensors"

    @property
    def pseudo_dir(self) -> Path:
        return self.root / PSEUDO


@dataclass(frozen=True)
class RunLayout:
    """The paths of the run directory ``root``; ``export_out_dir`` is ``export.out_dir`` (None: the default)."""

    root: Path
    export_out_dir: Path | None = None

    @classmethod
    def of(cls, config: Config) -> RunLayout:
        """The layout a command writes with ``config``: ``run.out_dir``, and ``export.out_dir`` when set."""
        out = config.export.out_dir
        return cls(Path(config.run.out_dir), None if out is None else Path(out))

    @classmethod
    def at(cls, run_dir: Path, config: Config | None = None) -> RunLayout:
        """The layout of an existing run directory; ``config`` (its resolved config) places the export."""
        out = None if config is None else config.export.out_dir
        return cls(Path(run_dir), None if out is None else Path(out))

    @classmethod
    def recorded(cls, run_dir: Path) -> RunLayout:
        """:meth:`at` with the config the run recorded (``config.yaml``, else ``train/config.yaml``);
        an unreadable or absent one counts as none. For messages that guess, never for writing."""
        from sskd_deploy.errors import ConfigError

        layout = cls(Path(run_dir))
        for path in (layout.config_file, layout.train_config):
            if path.is_file():
                from sskd_deploy.config.load import load_config

                try:
                    return cls.at(run_dir, load_config(path))
                except (ConfigError, OSError):  # a guess for a message: the default place is still one
                    continue
        return layout

    # the run directory
    @property
    def config_file(self) -> Path:
        return self.root / CONFIG

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def data_statistics(self) -> Path:
        return self.root / DATA_STATISTICS

    @property
    def data_overlays(self) -> Path:
        return self.root / DATA_OVERLAYS

    @property
    def report(self) -> Path:
        return self.root / REPORT

    # training
    @property
    def train(self) -> TrainLayout:
        return TrainLayout(self.root / TRAIN)

    @property
    def train_dir(self) -> Path:
        return self.train.root

    @property
    def train_config(self) -> Path:
        return self.train.config_file

    @property
    def train_summary(self) -> Path:
        return self.train.summary

    def stage_dir(self, stage: str) -> Path:
        return self.train.stage_dir(stage)

    def stage_file(self, stage: str, name: str) -> Path:
        """A file of a stage folder, e.g. ``stage_file("student_3", CHECKPOINT)``."""
        return self.train.stage_file(stage, name)

    # export
    @property
    def default_export(self) -> bool:
        return self.export_out_dir is None

    @property
    def export_dir(self) -> Path:
        """``export.out_dir`` when set, else ``<run>/export``."""
        return self.root / EXPORT if self.export_out_dir is None else self.export_out_dir

    @property
    def export_manifest(self) -> Path:
        return self.export_dir / MANIFEST

    def export_report(self, stem: str = PARITY, suffix: str = ".json") -> Path:
        """A parity report of the artifact: ``parity.json``, ``parity_triton.md`` ..."""
        return self.export_dir / f"{stem}{suffix}"

    @property
    def export_fp32_graph(self) -> Path:
        return self.export_dir / FP32_GRAPH

    @property
    def export_hint(self) -> str:
        """The export directory as a command hint: ``runs/<name>/export`` for the default place."""
        return DEFAULT_EXPORT_HINT if self.export_out_dir is None else str(self.export_out_dir)

    # bench
    @property
    def bench_dir(self) -> Path:
        return self.root / BENCH

    @property
    def bench_latency(self) -> Path:
        return self.bench_dir / LATENCY

    @property
    def bench_triton_legacy(self) -> Path:
        return self.bench_dir / TRITON_LEGACY

    @property
    def bench_graphs(self) -> Path:
        return self.bench_dir / GRAPHS

    # cache and serving
    @property
    def cache_dir(self) -> Path:
        return self.root / CACHE

    @property
    def calibration_cache(self) -> Path:
        return self.cache_dir / CALIBRATION

    @property
    def serve_dir(self) -> Path:
        return self.root / SERVE

    @property
    def triton_repository(self) -> Path:
        """The repository the main job's bench serves from (``serve`` itself uses ``serve.repository``)."""
        return self.serve_dir / TRITON_REPOSITORY

    @property
    def triton_log(self) -> Path:
        return self.serve_dir / TRITON_LOG

    def shown(self, path: Any) -> str:
        """``path`` as messages and the report name it: relative to the run (POSIX) when inside it, else as is."""
        path = Path(path)
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)
