"""How many workers a pool should have, from its load: pure functions, no I/O.

Signals (summed over the pool's workers, scraped from the router, see
`mainsail.router.fleet.pool_load`): requests waiting (inside the workers, plus those the router
holds because no worker could take them), and KV-cache blocks in use against the blocks the
pool has. The spec's targets (`pools.<role>.autoscaling`) say how much of each one replica
should carry. As in the Kubernetes HPA with several metrics, each signal proposes a count and
the largest wins:

    by_queue = ceil(waiting / targetQueueDepth)
    by_kv    = ceil(kv_blocks_used / (targetKvUtilization * kv_blocks_total / workers))
    raw      = max(by_queue, by_kv, 1 if anything is running or waiting else 0)

then clamped to ``[minReplicas, maxReplicas]``. Why these two: a decode pool saturates on KV
memory first (utilisation climbs with concurrent sequences and their context), and a queue
building up inside workers or at the router is the direct symptom of too few of them; compute
saturation shows up as the queue. Scale-to-zero needs ``minReplicas: 0`` and no work at all.

Stabilisation (`stabilize`): scale up at once — a queue costs TTFT now — but scale down only to
the highest raw count seen over the last ``scaleDownDelaySeconds``, so a lull between bursts
does not tear down warm workers (their KV cache is worth keeping). The history is the caller's:
the points where the raw count changed, each in effect until the next.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from mainsail.spec.pools import Autoscaling


@dataclass(frozen=True)
class PoolSignals:
    """One pool's load as the router last saw it."""

    workers: int
    running: int
    waiting: int
    queued: int
    kv_blocks_used: int
    kv_blocks_total: int

    def __post_init__(self) -> None:
        for name in ("workers", "running", "waiting", "queued", "kv_blocks_used"):
            if getattr(self, name) < 0:
                raise ValueError(f"PoolSignals.{name} must be >= 0")
        if self.kv_blocks_total < 0:
            raise ValueError("PoolSignals.kv_blocks_total must be >= 0")


@dataclass(frozen=True)
class Recommendation:
    """A replica count and why, in words an operator reads in status and events."""

    replicas: int
    reason: str


def raw_replicas(auto: Autoscaling, signals: PoolSignals) -> Recommendation:
    """What the current load asks for, before bounds and stabilisation."""
    waiting = signals.waiting + signals.queued
    by_queue = math.ceil(waiting / auto.target_queue_depth)
    by_kv = 0
    kv_util = 0.0
    if signals.workers > 0 and signals.kv_blocks_total > 0:
        per_worker = signals.kv_blocks_total / signals.workers
        kv_util = signals.kv_blocks_used / signals.kv_blocks_total
        by_kv = math.ceil(signals.kv_blocks_used / (auto.target_kv_utilization * per_worker))
    busy = 1 if (signals.running or waiting) else 0
    replicas = max(by_queue, by_kv, busy)
    if replicas == by_queue and by_queue >= by_kv and by_queue > busy:
        why = f"{waiting} waiting, target {auto.target_queue_depth:g} per replica"
    elif replicas == by_kv and by_kv > busy:
        why = (
            f"KV cache {100 * kv_util:.0f}% used over {signals.workers} worker(s), "
            f"target {100 * auto.target_kv_utilization:.0f}%"
        )
    elif busy:
        why = "requests in flight, load under every target"
    else:
        why = "idle: nothing running or waiting"
    return Recommendation(replicas, why)


def clamp(auto: Autoscaling, replicas: int) -> int:
    """``replicas`` within the pool's bounds."""
    return min(max(replicas, auto.min_replicas), auto.max_replicas)


def stabilize(
    auto: Autoscaling,
    current: int,
    raw: int,
    history: Iterable[tuple[float, int]],
    now: float,
) -> int:
    """The count to set: ``raw`` when it is higher than ``current``, else the highest raw
    count in effect during the scale-down window, never below ``raw`` and never above
    ``current``; then clamped. ``history`` is ``(time, raw)`` pairs in time order, each raw
    count in effect from its time until the next pair's (the caller's record)."""
    if raw >= current:
        return clamp(auto, raw)
    since = now - auto.scale_down_delay_seconds
    ordered = sorted(history)
    before = [r for t, r in ordered if t < since][-1:]  # the count in effect when it began
    recent = before + [r for t, r in ordered if t >= since]
    # No history reaching back a whole window yet (operator just started): hold.
    oldest = min((t for t, _ in history), default=now)
    if oldest > since:
        return clamp(auto, current)
    return clamp(auto, min(current, max([raw, *recent])))
