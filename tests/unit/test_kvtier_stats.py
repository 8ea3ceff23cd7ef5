"""`TierStats.record_lookup`: the one count of a lookup's leading hits both KV tiers use (a
block after the first miss cannot be loaded without it, so it is no hit)."""

from __future__ import annotations

import pytest

from mainsail.workers.kvtier.circuit import TierStats

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("present", "hits"),
    [
        ([], 0),
        ([False], 0),
        ([True, True, True], 3),
        ([True, False, True], 1),
        ([False, True, True], 0),
        ([True, True, False, False, True], 2),
    ],
)
def test_a_lookup_counts_the_hits_before_the_first_miss(present: list[bool], hits: int) -> None:
    stats = TierStats()
    assert stats.record_lookup(present) == hits
    assert stats.record_lookup(present) == hits
    assert (stats.lookups, stats.hit_blocks) == (2, 2 * hits)
