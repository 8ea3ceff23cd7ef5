"""`kv-prefix`: the fraction of the request's prompt blocks already cached on the worker.

Formula: ``s_w = min(1, prefix_hits[w] / len(request.block_hashes))``, where ``prefix_hits`` is
the longest cached prefix per worker from the global KV index (`mainsail.router.kvindex`),
computed once per request before scoring. A request with no full block scores 0 everywhere
(no preference).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from mainsail.router.scheduling.types import SchedulingContext, WorkerSnapshot


class KVPrefixScorer:
    """Rewards workers that can skip prefill of a cached prefix."""

    name: ClassVar[str] = "kv-prefix"
    reads: ClassVar[frozenset[str]] = frozenset({"worker_id", "prefix_hits", "request"})

    def score(self, ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]) -> list[float]:
        blocks = len(ctx.request.block_hashes)
        if blocks == 0 or not ctx.prefix_hits:
            return [0.0] * len(candidates)
        get = ctx.prefix_hits.get
        inv = 1.0 / blocks
        scores = [get(w.worker_id, 0) * inv for w in candidates]
        if max(ctx.prefix_hits.values()) > blocks:  # more hits than blocks: clip to 1
            scores = [s if s < 1.0 else 1.0 for s in scores]
        return scores
