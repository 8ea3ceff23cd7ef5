"""`healthy`: drop workers whose last health check failed.

Formula: keep ``w`` iff ``w.healthy``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from mainsail.router.scheduling.types import SchedulingContext, WorkerSnapshot


class HealthyFilter:
    """Keeps healthy workers only."""

    name: ClassVar[str] = "healthy"
    reads: ClassVar[frozenset[str]] = frozenset({"healthy"})

    def filter(
        self, ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]
    ) -> list[WorkerSnapshot]:
        return [w for w in candidates if w.healthy]
