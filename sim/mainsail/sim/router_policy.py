"""Ours: the router's real scheduling profile and KV index, driven on the virtual clock.

Why an adapter and not a re-implementation: the simulator is the test of the router's design.
This module builds exactly what the router builds from a `RoutingProfile`
(`mainsail.router.scheduling.build_profile`) and feeds its real global KV index
(`mainsail.router.kvindex.GlobalKVIndex`) with the KV events the simulated workers publish; per
request it asks the index for prefix hits, assembles a `SchedulingContext` of the workers'
`WorkerSnapshot`s and calls ``profile.schedule``. The simulator's clock is injected into both.

With a shared KV tier (`mainsail.sim.kvtier`) the index also holds the tier's blocks (tier
``redis``, per writer) and each decision gets ``tier_hits`` from `shared_tier_hits`, as the
router's `WorkerChooser` computes them; ``tier_aware=False`` leaves them out (device-only
scoring, the comparison of bench/sim_tier.py).

``ours-approx`` runs the same profile over the `ApproximateIndex` (learned from dispatches,
expiring on the virtual clock), as the router does for workers that publish no events.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

from mainsail.router.kvindex import ApproximateIndex, GlobalKVIndex
from mainsail.router.scheduling.profile import build_profile
from mainsail.router.scheduling.tier_hits import shared_tier_hits
from mainsail.router.scheduling.types import RequestInfo, SchedulingContext
from mainsail.sim.request import SimRequest
from mainsail.sim.worker import SimWorker
from mainsail.spec.routing_profile import RoutingProfile


class RouterPolicy:
    """The router's `SchedulingProfile` over an exact or approximate `KVIndex`."""

    def __init__(
        self,
        workers: Sequence[SimWorker],
        rng: random.Random,
        clock: Callable[[], float],
        *,
        routing: RoutingProfile | None = None,
        approximate: bool = False,
        index_max_blocks: int = 1_000_000,
        changed: set[int] | None = None,
        tier_aware: bool = True,
    ) -> None:
        self.name = "ours-approx" if approximate else "ours"
        self._workers = workers
        self._by_id = {w.worker_id: w.index for w in workers}
        self._clock = clock
        self.profile = build_profile(routing or RoutingProfile(), rng, clock=clock)
        self.index: GlobalKVIndex | ApproximateIndex
        if approximate:
            self.index = ApproximateIndex(max_blocks=index_max_blocks, clock=clock)
        else:
            self.index = GlobalKVIndex(max_blocks=index_max_blocks)
        self._approx = approximate
        self._tier_aware = tier_aware and any(w.tier is not None for w in workers)
        self._tier_of = {w.worker_id: w.snapshot().kv_tier_id for w in workers}
        self._snaps = [w.snapshot() for w in workers]
        self._changed = changed  # indexes of workers whose snapshot is stale (None: all)
        self.decide_wall_s = 0.0  # host CPU time spent in index lookups and scheduling
        self.decisions = 0

    @property
    def wants_kv_events(self) -> bool:
        """Only the exact index consumes worker events."""
        return not self._approx

    def on_kv_event(
        self, worker_id: str, kind: str, hashes: list[int], tier: str = "device"
    ) -> None:
        """A simulated worker published a KV event."""
        self.index.apply_event(worker_id, kind, hashes, tier)

    def route(self, req: SimRequest, now: float) -> int | None:
        start = time.perf_counter()
        hashes = tuple(req.block_hashes)
        info = RequestInfo(
            request_id=str(req.index),
            block_hashes=hashes,
            prompt_tokens=req.input_tokens,
            max_tokens=req.output_tokens,
        )
        snaps, workers = self._snaps, self._workers
        if self._changed is None:
            snaps[:] = [w.snapshot() for w in workers]
        else:
            for i in self._changed:
                snaps[i] = workers[i].snapshot()
            self._changed.clear()
        workers_now = tuple(snaps)
        tier_hits: dict[str, int] = {}
        if self._tier_aware and hashes:
            writers = self.index.longest_prefix(hashes, tiers=("redis",))
            tier_hits = shared_tier_hits(writers, self._tier_of, workers_now)
        ctx = SchedulingContext(
            request=info,
            workers=workers_now,
            prefix_hits=self.index.longest_prefix(hashes),
            tier_hits=tier_hits,
            now=self._clock(),
        )
        decision = self.profile.schedule(ctx)
        chosen = None if decision.worker_id is None else self._by_id[decision.worker_id]
        if chosen is not None and isinstance(self.index, ApproximateIndex):
            self.index.record_dispatch(decision.worker_id or "", hashes)
        self.decide_wall_s += time.perf_counter() - start
        self.decisions += 1
        return chosen
