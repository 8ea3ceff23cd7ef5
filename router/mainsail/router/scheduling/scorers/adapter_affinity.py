"""`adapter-affinity`: prefer workers that already hold the request's LoRA adapter.

Formula: ``s_w = 1`` if ``request.adapter`` is None or ``request.adapter in w.adapters``,
else ``0``. Without an adapter every worker scores 1, which changes no ranking.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from mainsail.router.scheduling.types import SchedulingContext, WorkerSnapshot


class AdapterAffinityScorer:
    """Rewards workers that need not load an adapter first."""

    name: ClassVar[str] = "adapter-affinity"
    reads: ClassVar[frozenset[str]] = frozenset({"adapters", "request"})

    def score(self, ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]) -> list[float]:
        adapter = ctx.request.adapter
        if adapter is None:
            return [1.0] * len(candidates)
        return [1.0 if adapter in w.adapters else 0.0 for w in candidates]
