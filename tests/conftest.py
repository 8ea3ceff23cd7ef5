"""Fixtures for every tier: the generated tiny checkpoint, cached once per machine."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The generated tiny Llama checkpoint (cached under ~/.cache/mainsail/models)."""
    from mainsail.workers.checkpoint import ensure_checkpoint

    return ensure_checkpoint("llama")
