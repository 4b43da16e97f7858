"""The application layer: one module per family of ``sskd-deploy`` commands, as library functions the
CLI (:mod:`sskd_deploy.cli`) calls after parsing its options.

==============  ==========================================================================================
module          serves
==============  ==========================================================================================
``run``         ``run``: the main job, a straight list of timed steps (data, check, overlays, then
                ``run.steps``: train, export, bench, report) recorded in the run manifest
``data``        ``data show``, ``data check``; the ground-truth overlays the main job draws
``model``       ``model info`` (presets, checkpoints, Grounded-SAM2), ``model profile``
``train``       ``train``
``export``      ``export``, ``verify`` (``verify --triton`` through :mod:`.serve`)
``bench``       ``bench`` (``bench --triton`` through :mod:`.serve`)
``serve``       ``serve``, ``predict``; the Triton legs of ``verify``, ``bench`` and the main job
``teacher``     ``teacher zero-shot``, ``teacher label``
``tables``      no command of its own: the rich tables more than one command prints (dataset check,
                parity, latency, Triton load)
==============  ==========================================================================================

``pretrain``, ``report``, ``eval``, ``data synth``, ``config check`` and ``version`` need one call
into the library each, which the CLI makes itself.

Only :mod:`sskd_deploy.cli` and these modules import from here; they may import every layer below.
Their imports form no cycle (``tests/unit/test_layering.py`` checks it): ``run`` calls ``data``,
``export`` and ``bench``; ``export`` and ``bench`` call ``serve``; every module may use ``tables``,
which imports none of them. Heavy libraries are imported inside the functions so that importing a
command module stays light.
"""
