"""``sskd-deploy run``: the main job, as one straight list of timed steps.

On the embedded default it generates the synthetic world (or reuses an identical one), validates
it, summarises it and draws its ground truth, then runs the steps of ``run.steps`` in order
(train, export, bench, report), each writing into the run directory and recording itself in the
run manifest ``<out_dir>/manifest.json``. :data:`STEPS` is that list; :func:`run_pipeline` runs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sskd_deploy.commands.tables import print_check_report, print_parity
from sskd_deploy.config.layout import PARITY, PARITY_TRITON, RunLayout
from sskd_deploy.errors import SSKDError
from sskd_deploy.io import atomic_write_json, atomic_write_text, recorded_path

if TYPE_CHECKING:
    from rich.console import Console

    from sskd_deploy.config import Config
    from sskd_deploy.data.sources import DataSources


@dataclass
class _Run:
    """What the steps share: the inputs, and what earlier steps produced for later ones."""

    config: Config
    console: Console
    layout: RunLayout
    steps: dict[str, dict] = field(default_factory=dict)  # the manifest's "steps", filled in as they finish
    data: DataSources | None = None
    overlay: Path | None = None
    manifest: dict | None = None  # once written, each later step's record is written into it too
    report: Path | None = None


class Step(NamedTuple):
    name: str
    run: Callable[[_Run], dict | None]
    digits: int | None  # decimals of the seconds recorded under steps[name]; None: not recorded
    optional: bool = False  # runs only when ``run.steps`` names it


def _data(run: _Run) -> dict:
    from sskd_deploy.data.sources import resolve_data

    run.data = resolve_data(run.config.data, console=run.console)
    return {"source": run.data.describe()}


def _check(run: _Run) -> dict:
    reports = run.data.check()
    for report in reports:
        print_check_report(report, run.console)
    problems = [p for r in reports for p in r.problems]
    if problems:
        raise SSKDError(f"{len(problems)} dataset problem(s) found; fix them or point the config elsewhere")
    return {"problems": len(problems)}


def _statistics(run: _Run) -> None:
    from sskd_deploy.data.stats import dataset_statistics, format_statistics

    stats = {role: dataset_statistics(ds) for role, ds in run.data.roles().items()}
    atomic_write_json(run.layout.data_statistics, stats, indent=2)
    for role, s in stats.items():
        run.console.print(f"[bold]{role}[/bold]\n{format_statistics(s)}")


def _overlays(run: _Run) -> dict:
    from sskd_deploy.commands.data import draw_ground_truth

    val = run.data.val
    run.overlay = draw_ground_truth(val, list(range(min(8, len(val)))), run.layout.data_overlays)
    return {"file": run.overlay.name}


def _train(run: _Run) -> dict:
    from sskd_deploy.training.runner import run_training

    summary = run_training(run.config, data=run.data, console=run.console)
    return {"summary": run.layout.shown(run.layout.train_summary),
            "stages": {k: {"ap": v.get("ap"), "ap50": v.get("ap50")} for k, v in summary["stages"].items()}}


def _export(run: _Run) -> dict:
    from sskd_deploy.commands.export import export_command

    exported = export_command(run.config, console=run.console)
    parity = exported.get("parity", {})
    if parity and not parity["ok"]:
        raise SSKDError(f"export parity gate failed: see {run.layout.export_report(PARITY, '.md')}")
    # relative to the run directory when the artifact is inside it (the default), else absolute
    return {"artifact": recorded_path(run.layout.export_manifest, run.layout.root), "parity_ok": parity.get("ok"),
            "ap": {r["runner"]: r["ap"] for r in parity.get("rows", [])}}


def _bench(run: _Run) -> dict:
    artifact = run.layout.export_dir if run.layout.export_manifest.is_file() else None
    benched = main_job_bench(run.config, artifact, console=run.console)
    return {"result": run.layout.shown(run.layout.bench_latency), "triton": benched["triton"]}


def _manifest(run: _Run) -> None:
    from sskd_deploy.config import config_hash
    from sskd_deploy.provenance import environment, library_versions

    run.manifest = {
        "format": "sskd-deploy/run", "version": 1, "config_hash": config_hash(run.config),
        "data_hash": run.data.content_hash(), "steps": run.steps,
        "versions": library_versions(), "environment": environment(),
    }
    atomic_write_json(run.layout.manifest, run.manifest, indent=2)


def _report(run: _Run) -> dict:
    from sskd_deploy.report import build_report

    run.report = build_report(run.layout.root, log=run.console.print)
    return {"file": run.report.name}


# The main job, in order. The report comes after the manifest so that it shows the manifest (and
# every step's time) just written; its own record is then written into the manifest too.
STEPS: tuple[Step, ...] = (
    Step("data", _data, 3),
    Step("check", _check, 3),
    Step("statistics", _statistics, None),
    Step("overlays", _overlays, 3),
    Step("train", _train, 1, optional=True),
    Step("export", _export, 1, optional=True),
    Step("bench", _bench, 1, optional=True),
    Step("manifest", _manifest, None),
    Step("report", _report, 1, optional=True),
)


def run_pipeline(config: Config, *, console: Console) -> dict:
    """The main job. Returns (and writes) the run manifest ``<out_dir>/manifest.json``."""
    from sskd_deploy.config import dump_config

    layout = RunLayout.of(config)
    out = layout.root
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(layout.config_file, dump_config(config))
    run = _Run(config=config, console=console, layout=layout)
    for step in STEPS:
        if step.optional and step.name not in config.run.steps:
            continue
        start = time.perf_counter()
        record = step.run(run)
        if step.digits is None:
            continue
        run.steps[step.name] = {"seconds": round(time.perf_counter() - start, step.digits), **record}
        if run.manifest is not None:
            atomic_write_json(layout.manifest, run.manifest, indent=2)
    if run.report is not None:
        console.print(f"[green]done[/green]: run directory {out}; report: [bold]{run.report}[/bold]")
    else:
        console.print(f"[green]done[/green]: run directory {out} (overlays: {run.overlay})")
    return run.manifest


def main_job_bench(config: Config, artifact_dir: Path | None, *, console: Console) -> dict[str, Any]:
    """The main job's bench step: ``bench``, and with ``bench.triton`` the artifact served on loopback
    (repository under the run directory), ``verify --triton`` and the load test through it."""
    from rich.markup import escape

    from sskd_deploy.commands.bench import bench_command
    from sskd_deploy.serving.server import ServeError

    settings = config.bench
    if settings.triton == "off" or artifact_dir is None:
        return {"result": bench_command(config, artifact_dir, console=console), "triton": "off"}
    from sskd_deploy.export.artifact import read_manifest

    # the served batch bound cannot exceed the graph's; the repository lives in the run, not the checkout
    graph_max = int(read_manifest(artifact_dir)["export_config"]["max_batch"])
    serve = config.serve.model_copy(update={"repository": RunLayout.of(config).triton_repository,
                                            "max_batch": min(config.serve.max_batch, graph_max)})
    served = config.model_copy(update={"serve": serve})
    try:
        from sskd_deploy.commands.serve import prepare_server

        server, model, _, _ = prepare_server(served, artifact_dir, console=console, any_port=True)
    except ServeError as err:
        if settings.triton == "on":
            raise
        console.print(escape(f"bench: no Triton leg ({err}); set bench.triton: off to silence this"), soft_wrap=True)
        return {"result": bench_command(config, artifact_dir, console=console), "triton": f"skipped: {err}"}
    with server:
        _verify_served(served, artifact_dir, server.grpc_url, model, console)
        result = bench_command(config, artifact_dir, console=console, triton=server.grpc_url, triton_model=model,
                               concurrency=list(settings.triton_concurrency), duration_s=settings.triton_duration_s)
    return {"result": result, "triton": model}


def _verify_served(config: Config, artifact_dir: Path, url: str, model: str, console: Console) -> None:
    from sskd_deploy.commands.serve import verify_triton
    from sskd_deploy.data.sources import resolve_data

    data = resolve_data(config.data, console=console)
    report = verify_triton(artifact_dir, url, model, data.val, config, console=console, report_name=PARITY_TRITON)
    print_parity(report, console)
    if not report["ok"]:
        raise SSKDError(f"the served model disagrees with the artifact: see {artifact_dir / (PARITY_TRITON + '.md')}")
