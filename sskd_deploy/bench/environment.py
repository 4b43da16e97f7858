"""What a benchmark figure was measured on: the machine, the GPU, and on a Jetson its power mode.

A latency means nothing without these: the same engine on a Jetson Orin runs several times
slower in a 15 W mode than in MAXN with the clocks locked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sskd_deploy.provenance import environment


def bench_environment() -> dict[str, Any]:
    """:func:`provenance.environment` plus the GPU, when there is one."""
    import torch

    env = environment()
    env["torch_threads"] = torch.get_num_threads()
    env["openblas_threads"] = os.environ.get("OPENBLAS_NUM_THREADS", "unset (OpenBLAS default: all cores)")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "memory_gb": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}
    else:
        env["gpu"] = None
    jetson = jetson_state()
    if jetson:
        env["jetson"] = jetson
    return env


def jetson_state() -> dict[str, str] | None:
    """L4T release, power mode and clocks on a Jetson (a figure without its power mode is not comparable)."""
    import shutil
    import subprocess

    release = Path("/etc/nv_tegra_release")
    if not release.is_file():
        return None
    state = {"l4t": release.read_text().splitlines()[0].strip()}
    for key, command in (("power_mode", ["nvpmodel", "-q"]), ("clocks", ["jetson_clocks", "--show"])):
        if shutil.which(command[0]) is None:
            state[key] = f"{command[0]} not found"
            continue
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
            state[key] = (done.stdout or done.stderr).strip()[:2000]
        except (OSError, subprocess.TimeoutExpired) as err:
            state[key] = f"{' '.join(command)} failed: {err}"
    return state
