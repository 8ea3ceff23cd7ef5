"""`adapter`: prefer, strictly, workers that already hold the request's LoRA adapter.

Formula: if ``request.adapter`` is None keep every worker. Otherwise keep the workers with
``request.adapter in w.adapters``; when no candidate has it loaded, keep all candidates: a
worker advertises the adapters it loaded at start only once it has registered, and one that
lacks the adapter refuses the request with an error naming it (workers load every adapter of
the deployment at start; there is no load-on-demand yet).

Why this choice rather than reading an empty ``adapters`` set as "can load anything": an empty
set means "none loaded yet" on a freshly started worker, and a filter that treated it as a
wildcard would let cold workers pass while excluding warm ones that hold other adapters. Use
this filter for pinned placement; for a soft preference use the `adapter-affinity` scorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from mainsail.router.scheduling.types import SchedulingContext, WorkerSnapshot


class AdapterFilter:
    """Keeps workers holding the adapter, or everyone when nobody holds it yet."""

    name: ClassVar[str] = "adapter"
    reads: ClassVar[frozenset[str]] = frozenset({"adapters", "request"})

    def filter(
        self, ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]
    ) -> list[WorkerSnapshot]:
        adapter = ctx.request.adapter
        if adapter is None:
            return list(candidates)
        loaded = [w for w in candidates if adapter in w.adapters]
        return loaded if loaded else list(candidates)
