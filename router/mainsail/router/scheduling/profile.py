"""A scheduling profile: filters, then weighted scorers, then one picker, timed per plugin.

`build_profile` assembles one from the `RoutingProfile` of a `ModelDeployment`;
`SchedulingProfile.schedule(ctx)` is then a pure function of the context (plus the injected
random source for tie-breaking), which is what the router, the simulator and the tests call.

Total score of a candidate: ``sum_k weight_k * score_k(w)`` over the configured scorers, each
score in [0, 1]. With the default profile (kv-prefix 2, queue-depth 1, running-requests 1,
kv-utilization 0.5) a full prefix hit on a worker is outweighed once that worker carries about
twice the load of the least-loaded candidate (docs/scheduling.md, "Balance").
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mainsail.router.scheduling.plugin import Filter, Picker, Scorer
from mainsail.router.scheduling.registry import PluginRegistry, default_registry
from mainsail.router.scheduling.types import (
    Decision,
    PluginTiming,
    SchedulingContext,
    WorkerSnapshot,
)
from mainsail.spec.routing_profile import RoutingProfile


@dataclass(frozen=True)
class WeightedScorer:
    """A scorer and its weight (>= 0) in the total."""

    scorer: Scorer
    weight: float


class SchedulingProfile:
    """Runs filters -> weighted scorers -> picker on one context."""

    def __init__(
        self,
        filters: Sequence[Filter],
        scorers: Sequence[WeightedScorer],
        picker: Picker,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        for ws in scorers:
            if ws.weight < 0:
                raise ValueError(f"scorer {ws.scorer.name!r}: weight must be >= 0")
        self.filters = tuple(filters)
        self.scorers = tuple(scorers)
        self.picker = picker
        self._clock = clock

    @property
    def reads(self) -> frozenset[str]:
        """Every snapshot/context field some plugin of this profile reads."""
        out: set[str] = set(self.picker.reads)
        for f in self.filters:
            out |= f.reads
        for ws in self.scorers:
            out |= ws.scorer.reads
        return frozenset(out)

    def schedule(self, ctx: SchedulingContext) -> Decision:
        """Chooses a worker for ``ctx.request``, or says why none can take it."""
        clock = self._clock
        timings: list[PluginTiming] = []
        candidates: Sequence[WorkerSnapshot] = ctx.workers
        if not candidates:
            return Decision(None, reason="no workers registered")
        for f in self.filters:
            start = clock()
            kept = f.filter(ctx, candidates)
            timings.append(PluginTiming("filter", f.name, clock() - start, len(kept)))
            if not kept:
                return Decision(
                    None,
                    reason=f"filter {f.name!r} removed all {len(candidates)} candidates",
                    timings=tuple(timings),
                )
            candidates = kept

        totals = [0.0] * len(candidates)
        per_scorer: list[list[float]] = []
        for ws in self.scorers:
            start = clock()
            scores = ws.scorer.score(ctx, candidates)
            weight = ws.weight
            totals = [t + weight * s for t, s in zip(totals, scores, strict=True)]
            timings.append(PluginTiming("scorer", ws.scorer.name, clock() - start))
            per_scorer.append(scores)

        start = clock()
        chosen = self.picker.pick(totals)
        timings.append(PluginTiming("picker", self.picker.name, clock() - start))
        return Decision(
            worker_id=candidates[chosen].worker_id,
            scores={w.worker_id: t for w, t in zip(candidates, totals, strict=True)},
            components={
                ws.scorer.name: scores[chosen]
                for ws, scores in zip(self.scorers, per_scorer, strict=True)
            },
            timings=tuple(timings),
        )


def build_profile(
    profile: RoutingProfile,
    rng: random.Random | None = None,
    *,
    registry: PluginRegistry | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> SchedulingProfile:
    """Assembles the profile a `RoutingProfile` names; unknown names raise ValueError."""
    reg = registry if registry is not None else default_registry()
    unknown = [f"filter {n!r}" for n in profile.filters if n not in reg.filters]
    unknown += [f"scorer {s.name!r}" for s in profile.scorers if s.name not in reg.scorers]
    if profile.picker not in reg.pickers:
        unknown.append(f"picker {profile.picker!r}")
    if unknown:
        known = sorted({*reg.filters, *reg.scorers, *reg.pickers})
        raise ValueError(
            f"unknown routing plugins: {', '.join(unknown)} (known: {', '.join(known)})"
        )
    return SchedulingProfile(
        filters=[reg.filters[n]() for n in profile.filters],
        scorers=[WeightedScorer(reg.scorers[s.name](), s.weight) for s in profile.scorers],
        picker=reg.pickers[profile.picker](rng if rng is not None else random.Random()),
        clock=clock,
    )
