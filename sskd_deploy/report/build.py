"""``build_report``: gather every section of a run directory into one HTML file.

Sections are built independently from whichever files the run has, so a run that stopped after
training still gets a useful page; only a directory that is not a run at all, or a file that is
present but broken, is an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sskd_deploy.config.layout import REPORT
from sskd_deploy.io import atomic_write_text
from sskd_deploy.report.latency import latency_section
from sskd_deploy.report.overlays import overlay_section
from sskd_deploy.report.overview import data_section, environment_section
from sskd_deploy.report.page import render_page
from sskd_deploy.report.parity import export_section
from sskd_deploy.report.runfiles import RunFiles, open_run
from sskd_deploy.report.training import training_section

REPORT_NAME = REPORT


def _config(run: RunFiles) -> Any | None:
    """The run's resolved config, or None when it has none (a broken one is a ConfigError)."""
    if not run.layout.config_file.is_file():
        return None
    from sskd_deploy.config import load_config

    return load_config(run.layout.config_file)


def _synthetic(config: Any | None, manifest: dict[str, Any] | None) -> bool:
    """Whether the run trained on the generated world (then only stage order compares with the paper)."""
    if config is not None:
        return config.data.labeled is None
    origin = (((manifest or {}).get("steps") or {}).get("data") or {}).get("source", {}).get("origin", "")
    return str(origin).startswith("synthetic")


def _facts(run: RunFiles, config: Any | None, manifest: dict[str, Any] | None) -> list[tuple[str, object]]:
    from sskd_deploy import __version__

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    steps = ", ".join(config.run.steps) if config is not None else "\u2014"
    return [("run directory", str(run.root.resolve())), ("generated", stamp), ("sskd-deploy", __version__),
            ("main job steps", steps or "data only"),
            ("config hash", str((manifest or {}).get("config_hash", "\u2014"))[:16])]


def build_report(run_dir: Path, *, out: Path | None = None, num_overlays: int = 4,
                 log: Callable[[str], None] = print) -> Path:
    """Write the HTML report of ``run_dir`` to ``out`` (default ``<run_dir>/report.html``), atomically.

    Returns the path written. Raises InputError when ``run_dir`` is not a run directory or one of
    its JSON files is malformed; every absent piece becomes a note on the page instead.
    """
    start = time.perf_counter()
    run = open_run(Path(run_dir))
    manifest = run.json(run.layout.manifest)
    config = _config(run)
    run = run.placed(config)  # the artifact where the run's config put it (export.out_dir)
    sections = [
        data_section(run=run, manifest=manifest),
        training_section(run=run, synthetic=_synthetic(config, manifest)),
        overlay_section(run=run, config=config, num=num_overlays, log=log),
        export_section(run=run),
        latency_section(run=run),
        environment_section(run=run, manifest=manifest),
    ]
    html = render_page(title=f"sskd-deploy run report: {run.root.resolve().name}",
                       facts=_facts(run, config, manifest), sections=sections)
    target = Path(out) if out is not None else run.layout.report
    atomic_write_text(target, html)
    log(f"report: {len(html.encode()) / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s")
    return target
