"""Fixtures for unit tests: a tiny checkpoint (cached) and a router wired to fake workers."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The generated tiny Llama checkpoint (cached under ~/.cache/mainsail/models)."""
    from mainsail.workers.checkpoint import ensure_checkpoint

    return ensure_checkpoint("llama")
