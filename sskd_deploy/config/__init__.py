"""Typed, frozen run configuration loaded from YAML, with every problem reported at once.

One module per part (pure data: no torch):

- :mod:`~sskd_deploy.config.types`: the :class:`Section` base and the shared field types.
- :mod:`~sskd_deploy.config.io`: YAML in and out, pydantic errors as one line each.
- :mod:`~sskd_deploy.config.run`: the ``run`` and ``data`` sections and the top-level :class:`Config`.
- :mod:`~sskd_deploy.config.load`: loading, overrides, dumping and hashing a :class:`Config`.
- :mod:`~sskd_deploy.config.train`: the ``train`` section (stages, schedules, losses).
- :mod:`~sskd_deploy.config.teacher`: ``train.grounded_sam2``, the foundation-model teacher.
- :mod:`~sskd_deploy.config.export`: the ``export`` section (precisions, calibration, parity).
- :mod:`~sskd_deploy.config.serve`: the ``serve`` section (Triton repository and server).
- :mod:`~sskd_deploy.config.bench`: the ``bench`` section.
- :mod:`~sskd_deploy.config.model`: model sizes (:class:`ModelConfig`) and the named presets.
- :mod:`~sskd_deploy.config.layout`: the run directory's layout (:class:`RunLayout`), every path named once.

The names below are the run configuration's entry points; the section classes and model presets
are imported from their own modules.
"""

from __future__ import annotations

from sskd_deploy.config.load import apply_overrides, config_from_dict, config_hash, dump_config, load_config
from sskd_deploy.config.run import (
    PIPELINE_STEPS,
    Config,
    DataConfig,
    DatasetSpec,
    RunConfig,
    SplitConfig,
    SynthConfig,
)

__all__ = [
    "PIPELINE_STEPS",
    "Config",
    "DataConfig",
    "DatasetSpec",
    "RunConfig",
    "SplitConfig",
    "SynthConfig",
    "apply_overrides",
    "config_from_dict",
    "config_hash",
    "dump_config",
    "load_config",
]
