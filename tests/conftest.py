"""Fixtures and ordering for every tier: the generated tiny checkpoint, cached once per machine,
and the tiers run cheapest first with the cluster tier last."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# Every property test runs without Hypothesis's per-example deadline (200 ms by default): the
# machines that run CI are shared and noisy, and performance is measured in bench/, never by a
# test timing itself. Slow examples still show in Hypothesis's statistics.
settings.register_profile("mainsail", deadline=None)
settings.load_profile("mainsail")

from support.tiers import tier_rank  # noqa: E402  (after the Hypothesis profile on purpose)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Stable sort by tier: the order within a tier stays pytest's own."""
    items.sort(key=lambda item: tier_rank(item.path))


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The generated tiny Llama checkpoint (cached under ~/.cache/mainsail/models)."""
    from mainsail.workers.checkpoint import ensure_checkpoint

    return ensure_checkpoint("llama")
