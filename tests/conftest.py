"""Fixtures for every tier: the generated tiny checkpoint, cached once per machine."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# Every property test runs without Hypothesis's per-example deadline (200 ms by default): the
# machines that run CI are shared and noisy, and performance is measured in bench/, never by a
# test timing itself. Slow examples still show in Hypothesis's statistics.
settings.register_profile("mainsail", deadline=None)
settings.load_profile("mainsail")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The generated tiny Llama checkpoint (cached under ~/.cache/mainsail/models)."""
    from mainsail.workers.checkpoint import ensure_checkpoint

    return ensure_checkpoint("llama")
