"""``sskd-deploy train``: the three SSKD stages and the supervised baseline on the config's data."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sskd_deploy.errors import SSKDError

if TYPE_CHECKING:
    from rich.console import Console

    from sskd_deploy.config import Config


def train_command(config: Config, *, stages: str | None, console: Console) -> dict:
    """``train``: resolve (or generate) the data, then run the selected stages."""
    from sskd_deploy.data.sources import resolve_data
    from sskd_deploy.training.runner import parse_stages, run_training

    try:
        chosen = parse_stages(stages, tuple(config.train.stages))
    except ValueError as err:
        raise SSKDError(f"--stages: {err}") from None
    data = resolve_data(config.data, console=console)
    return run_training(config, data=data, stages=chosen, console=console)
