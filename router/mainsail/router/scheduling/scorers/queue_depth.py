"""`queue-depth`: prefer workers with fewer requests waiting to start.

Formula: the pending count of a worker is the queue it reports plus the requests this router
sent that its last report does not include yet (in transit, or admitted since):

    pending_w = w.waiting + max(0, w.outstanding - w.running - w.waiting)

scored relative to the least-pending candidate (see `_relative`):
``s_w = 1 - min(1, (pending_w - m) / (m + slack))``, ``m = min pending``, ``slack = 2``.

Why the in-flight correction: worker reports lag (they arrive every few hundred milliseconds),
and a burst that arrives between two reports would otherwise see equal, stale queues everywhere
and follow cache affinity onto one worker. With a fresh report from a single router, the
correction is 0 and the score reads the worker's own queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from mainsail.router.scheduling.scorers._relative import relative_headroom
from mainsail.router.scheduling.types import SchedulingContext, WorkerSnapshot


class QueueDepthScorer:
    """Rewards short queues, relative to the shortest."""

    name: ClassVar[str] = "queue-depth"
    reads: ClassVar[frozenset[str]] = frozenset({"waiting", "running", "outstanding"})

    def __init__(self, slack: float = 2.0) -> None:
        if slack <= 0:
            raise ValueError(f"slack must be > 0, got {slack}")
        self.slack = slack

    def score(self, ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]) -> list[float]:
        # same formula as the docstring, without a max() call per worker
        pending = [
            w.outstanding - w.running if w.outstanding > w.running + w.waiting else w.waiting
            for w in candidates
        ]
        return relative_headroom(pending, self.slack)
