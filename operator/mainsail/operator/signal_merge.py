"""One deployment's load and registered workers from several router replicas, counted once.

Why a merge and not a sum: with `spec.router.replicas` > 1 every worker registers with, and
heartbeats to, every replica, so each replica's `mainsail_router_pool_*{role}` gauges already
describe the whole pool (the same workers, the same running/waiting/KV blocks, each replica as
of its last heartbeat). Summing them would count every worker once per replica. What a replica
alone knows is the requests *it* holds because no worker could take them yet
(`mainsail_router_queued_requests`): those are disjoint between replicas, so they add up.

    workers, running, waiting, kv_blocks_used, kv_blocks_total   max over replicas
    queued                                                       sum over replicas

Why the max for worker fields: replicas differ only by heartbeat age and by a worker that has
registered with one replica and not yet with another (a replica that just started). The max is
the freshest complete view for a growing load and never undercounts a worker; the autoscaler
leans towards scaling up on it, which costs a replica briefly, where undercounting costs TTFT.

Registered workers (status's `PoolsReady`) take the minimum instead: a worker serves every
client only once it is registered with every replica, so a pool is ready when the replica that
knows the fewest of its workers has them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from mainsail.operator.autoscale_policy import PoolSignals

WORKER_FIELDS = ("workers", "running", "waiting", "kv_blocks_used", "kv_blocks_total")
"""Fields every replica hears from the workers themselves: never summed across replicas."""


def merge_signals(readings: Iterable[Mapping[str, PoolSignals]]) -> dict[str, PoolSignals]:
    """Role -> one pool's signals from each replica's reading (see the module doc)."""
    merged: dict[str, dict[str, int]] = {}
    for reading in readings:
        for role, signals in reading.items():
            into = merged.setdefault(role, dict.fromkeys((*WORKER_FIELDS, "queued"), 0))
            for name in WORKER_FIELDS:
                into[name] = max(into[name], int(getattr(signals, name)))
            into["queued"] += signals.queued
    return {role: PoolSignals(**values) for role, values in merged.items()}


def merge_registered(readings: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Role -> workers registered with every replica read (a role a replica does not list has
    none there); empty when there is no reading."""
    readings = list(readings)
    roles = {role for reading in readings for role in reading}
    return {role: min(int(r.get(role, 0)) for r in readings) for role in roles}
