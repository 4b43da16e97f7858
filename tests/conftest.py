"""Shared test settings.

Under pytest-xdist each worker gets one torch thread: two workers with torch's default of one
thread per core oversubscribe a 2-core machine, and torch's spinning threads then run many times
slower than either alone.
"""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # the core suite runs without torch
        pass


def pytest_collection_modifyitems(config, items) -> None:
    """Test tiers by folder: everything under tests/integration is end-to-end and marked ``slow``
    (``make test-fast`` deselects it); tests/unit is the quick loop, where a few long tests carry
    the mark themselves."""
    import pytest

    integration = os.path.join(os.path.dirname(__file__), "integration") + os.sep
    for item in items:
        if str(item.path).startswith(integration) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
