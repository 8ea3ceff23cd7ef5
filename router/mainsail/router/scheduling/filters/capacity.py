"""`capacity`: drop saturated workers and workers whose context is too short.

Formula: with ``load(w) = max(w.outstanding, w.running + w.waiting)`` (the router's in-flight
count is fresher than the worker's last report, the report includes other routers' requests),
keep ``w`` iff

    load(w) < max_load_factor * w.max_num_seqs
    and request.prompt_tokens + request.max_tokens <= w.max_model_len

The default factor 2.0 admits one full running batch plus one full batch waiting; beyond that a
request is better held by the router's admission queue (bounded, with backpressure) than queued
at a worker where it cannot be rebalanced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from mainsail.router.scheduling.types import SchedulingContext, WorkerSnapshot


class CapacityFilter:
    """Keeps workers with room for one more request whose context fits."""

    name: ClassVar[str] = "capacity"
    reads: ClassVar[frozenset[str]] = frozenset(
        {"outstanding", "running", "waiting", "max_num_seqs", "max_model_len", "request"}
    )

    def __init__(self, max_load_factor: float = 2.0) -> None:
        if max_load_factor <= 0:
            raise ValueError(f"max_load_factor must be > 0, got {max_load_factor}")
        self.max_load_factor = max_load_factor

    def filter(
        self, ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]
    ) -> list[WorkerSnapshot]:
        need = ctx.request.prompt_tokens + ctx.request.max_tokens
        factor = self.max_load_factor
        return [
            w
            for w in candidates
            if need <= w.max_model_len
            and w.outstanding < (limit := factor * w.max_num_seqs)
            and w.running + w.waiting < limit
        ]
