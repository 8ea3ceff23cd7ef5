"""`max-score`: the candidate with the highest weighted total; ties broken at random.

Formula: ``argmax_i total_i``; every candidate within ``tolerance`` (1e-9, relative to the best
total, absolute near 0) of the best counts as tied and one is drawn uniformly from the injected
``random.Random``. Random tie-breaking matters: with equal scores a deterministic first-index
choice would send every idle-cluster request to the same worker.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar


class MaxScorePicker:
    """Highest total wins; ties are drawn uniformly."""

    name: ClassVar[str] = "max-score"
    reads: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, rng: random.Random, tolerance: float = 1e-9) -> None:
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.rng = rng
        self.tolerance = tolerance

    def pick(self, totals: Sequence[float]) -> int:
        if not totals:
            raise ValueError("max-score: no candidates to pick from")
        best = max(totals)
        floor = best - self.tolerance * max(1.0, abs(best))
        tied = [i for i, total in enumerate(totals) if total >= floor]
        return tied[0] if len(tied) == 1 else self.rng.choice(tied)
