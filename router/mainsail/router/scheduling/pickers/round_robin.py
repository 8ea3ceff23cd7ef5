"""`round-robin`: candidates in turn, ignoring scores — a baseline, not a production policy.

Formula: ``i = n mod len(candidates)`` where ``n`` counts this picker's decisions. The counter
is the picker's only state (a baseline needs memory by definition); it starts at a draw from
the injected ``random.Random`` so router replicas do not march in step. Benchmarks use it
to show what KV-aware scoring buys over plain rotation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar


class RoundRobinPicker:
    """Each decision takes the next candidate in order."""

    name: ClassVar[str] = "round-robin"
    reads: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, rng: random.Random) -> None:
        self.turn = rng.randrange(1 << 16)

    def pick(self, totals: Sequence[float]) -> int:
        if not totals:
            raise ValueError("round-robin: no candidates to pick from")
        self.turn += 1
        return self.turn % len(totals)
