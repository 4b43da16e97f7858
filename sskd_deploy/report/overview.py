"""The data and environment sections: what the run was trained on, and where and with what it ran.

Numbers in a report are only as good as the reader's knowledge of their conditions, so the
environment section gathers the machine, the library versions (from the run manifest and from
the bench, which may have run elsewhere), the config and data hashes and the time each step took.
"""

from __future__ import annotations

from typing import Any

from sskd_deploy.config.layout import DATA_OVERLAYS, DATA_STATISTICS, LATENCY, MANIFEST
from sskd_deploy.report.html import DASH, Section, figure, fmt, key_values, missing, section, table, tag
from sskd_deploy.report.runfiles import RunFiles, mapping

SIZE_BINS = ("small", "medium", "large")


def _role_table(stats: dict[str, Any]) -> object:
    rows = []
    for role, s in stats.items():
        if not isinstance(s, dict):
            continue
        per_image, sizes, area = (s.get(k) if isinstance(s.get(k), dict) else {}
                                  for k in ("instances_per_image", "sizes", "area_px"))
        rows.append([role, fmt(s.get("images"), 0), fmt(s.get("labeled_images"), 0), fmt(s.get("instances"), 0),
                     fmt(per_image.get("mean"), 2), *(fmt(sizes.get(b), 0) for b in SIZE_BINS),
                     fmt(area.get("median"), 0)])
    headers = ["role", "images", "labeled", "instances", "per image", "small", "medium", "large", "median px"]
    return table(headers, rows, align="lrrrrrrrr", caption="Instances by COCO size bin; median mask area in pixels")


def _class_table(stats: dict[str, Any]) -> object:
    roles = [r for r, s in stats.items() if isinstance(s, dict) and isinstance(s.get("instances_per_class"), dict)]
    classes = list(dict.fromkeys(c for r in roles for c in stats[r]["instances_per_class"]))
    rows = [[c, *(fmt(stats[r]["instances_per_class"].get(c), 0) for r in roles)] for c in classes]
    return table(["class", *roles], rows, align="l" + "r" * len(roles), caption="Instances per class and role")


def data_section(*, run: RunFiles, manifest: dict[str, Any] | None) -> Section:
    layout = run.layout
    stats = run.json(layout.data_statistics)
    steps = mapping(manifest or {}, "steps", where=layout.manifest)
    source = steps.get("data", {}).get("source", {}) if isinstance(steps.get("data"), dict) else {}
    parts: list[object] = [key_values([("origin", source.get("origin", DASH) if isinstance(source, dict) else DASH)])]
    if stats is None:
        parts.append(missing(DATA_STATISTICS, "run"))
    else:
        parts += [_role_table(stats), _class_table(stats)]
    png = run.png(layout.data_overlays)
    if png is None:
        parts.append(missing(DATA_OVERLAYS, "run"))
    else:
        parts.append(figure(png, caption=f"Ground-truth overlays ({DATA_OVERLAYS})"))
    return section("data", "Data", parts)


def _gpu(env: dict[str, Any]) -> str:
    gpu = env.get("gpu")
    if not isinstance(gpu, dict):
        return "none" if "gpu" in env else DASH  # only the bench records the GPU, as null when there is none
    return (f"{gpu.get('name', DASH)} (compute capability {gpu.get('capability', DASH)}, "
            f"{fmt(gpu.get('memory_gb'), 1)} GB)")


def _machine(env: dict[str, Any], manifest: dict[str, Any]) -> object:
    cores = f"{env.get('cpu_count', DASH)} (usable by this process: {env.get('affinity', DASH)})"
    return key_values([("CPU", env.get("cpu", DASH)), ("cores", cores), ("GPU", _gpu(env)),
                       ("platform", env.get("platform", DASH)), ("python", env.get("python", DASH)),
                       ("config hash", tag("code", manifest.get("config_hash", DASH))),
                       ("data hash", tag("code", manifest.get("data_hash", DASH)))])


def _versions(ran: dict[str, Any], timed: dict[str, Any]) -> object:
    rows = [[n, ran.get(n, DASH), timed.get(n, DASH)] for n in sorted({*ran, *timed})]
    return table(["library", f"run ({MANIFEST})", f"bench ({LATENCY})"], rows, caption="Library versions")


def _steps(steps: dict[str, Any]) -> object:
    rows = []
    for name, step in steps.items():
        step = step if isinstance(step, dict) else {}
        extra = ", ".join(f"{k} {v}" for k, v in step.items() if k != "seconds" and isinstance(v, (str, int, float)))
        rows.append([name, fmt(step.get("seconds"), 1), extra or DASH])
    return table(["step", "seconds", "details"], rows, align="lrl", caption=f"Steps of the main job ({MANIFEST})")


def environment_section(*, run: RunFiles, manifest: dict[str, Any] | None) -> Section:
    """Machine, versions, hashes and step timings; the bench's environment wins where both have a value."""
    bench = run.json(run.layout.bench_latency)
    ran, m_where = manifest or {}, run.layout.manifest
    timed, b_where = bench or {}, run.layout.bench_latency
    env = {**mapping(ran, "environment", where=m_where), **mapping(timed, "environment", where=b_where)}
    parts: list[object] = [] if manifest is not None else [missing(MANIFEST, "run")]
    parts += [_machine(env, ran),
              _versions(mapping(ran, "versions", where=m_where), mapping(timed, "versions", where=b_where))]
    if manifest is not None:
        parts.append(_steps(mapping(ran, "steps", where=m_where)))
    return section("environment", "Environment", parts)
