"""`weighted-random`: draw a candidate with probability proportional to its total.

Formula: ``P(i) = total_i / sum_j total_j`` (negative totals count as 0); if every total is 0,
uniform. Spreads load more evenly than `max-score` at the cost of some cache affinity; useful
when many routers decide at once from the same stale snapshot.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar


class WeightedRandomPicker:
    """Score-proportional random choice from the injected ``random.Random``."""

    name: ClassVar[str] = "weighted-random"
    reads: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, totals: Sequence[float]) -> int:
        if not totals:
            raise ValueError("weighted-random: no candidates to pick from")
        weights = [max(0.0, t) for t in totals]
        if sum(weights) <= 0.0:
            return self.rng.randrange(len(totals))
        return self.rng.choices(range(len(totals)), weights=weights)[0]
