"""`kv-utilization`: prefer workers with free KV-cache blocks.

Formula: ``s_w = 1 - w.kv_blocks_used / w.kv_blocks_total`` clipped to [0, 1]; a worker that
has not reported its cache size (``kv_blocks_total == 0``) scores 0, so it is not preferred on
missing data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from mainsail.router.scheduling.types import SchedulingContext, WorkerSnapshot


class KVUtilizationScorer:
    """Rewards free KV-cache room (fewer preemptions, room for the new prompt)."""

    name: ClassVar[str] = "kv-utilization"
    reads: ClassVar[frozenset[str]] = frozenset({"kv_blocks_used", "kv_blocks_total"})

    def score(self, ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]) -> list[float]:
        return [
            1.0 - w.kv_blocks_used / w.kv_blocks_total
            if w.kv_blocks_used < w.kv_blocks_total
            else 0.0
            for w in candidates
        ]
