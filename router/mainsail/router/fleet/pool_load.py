"""Per-role load of the registered workers, as Prometheus gauges: the autoscaler's signals.

Why the router exports them: it already hears every worker's heartbeat (running, waiting, KV
blocks in use) and knows what it dispatched and has not seen finish, so one scrape of the
router gives the operator's autoscaler a whole pool's load without talking to each worker.
Computed at scrape time from the registry, so the request path pays nothing for them.

    mainsail_router_pool_running{role}          sequences running (heartbeats)
    mainsail_router_pool_waiting{role}          sequences queued inside the workers (heartbeats)
    mainsail_router_pool_outstanding{role}      dispatched by this router, not finished
    mainsail_router_pool_kv_blocks_used{role}   KV blocks in use (heartbeats)
    mainsail_router_pool_kv_blocks_total{role}  KV blocks the pool has (heartbeats)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mainsail.router.fleet.registry import WorkerEntry
from mainsail.spec.pool_signals import POOL_FIELDS, POOL_PREFIX, ROLE_LABEL

ROLES = ("unified", "encode", "prefill", "decode")


@dataclass
class RoleLoad:
    """Sums over one role's registered workers."""

    running: int = 0
    waiting: int = 0
    outstanding: int = 0
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0


_HELP = {
    "running": "Sequences running in the role's workers (last heartbeats).",
    "waiting": "Sequences waiting inside the role's workers (last heartbeats).",
    "outstanding": "Requests this router dispatched to the role and has not seen finish.",
    "kv_blocks_used": "KV cache blocks in use in the role's workers (last heartbeats).",
    "kv_blocks_total": "KV cache blocks the role's workers have (last heartbeats).",
}
FIELDS: tuple[tuple[str, str], ...] = tuple((name, _HELP[name]) for name in POOL_FIELDS)


def role_loads(entries: Iterable[WorkerEntry]) -> dict[str, RoleLoad]:
    """Role -> summed load; every known role is present (zero when it has no worker)."""
    loads = {role: RoleLoad() for role in ROLES}
    for entry in entries:
        load = loads.setdefault(entry.info.role or "unified", RoleLoad())
        snap = entry.load
        load.running += snap.running
        load.waiting += snap.waiting
        load.outstanding += entry.outstanding
        load.kv_blocks_used += snap.kv_blocks_used
        load.kv_blocks_total += snap.kv_blocks_total
    return loads


class PoolLoadCollector(Collector):
    """Yields the gauges above from ``entries()`` (the registry's workers) at each scrape."""

    def __init__(self, entries: Callable[[], Iterable[WorkerEntry]]) -> None:
        self._entries = entries

    def collect(self) -> Iterator[GaugeMetricFamily]:
        loads = role_loads(self._entries())
        for name, doc in FIELDS:
            family = GaugeMetricFamily(POOL_PREFIX + name, doc, labels=[ROLE_LABEL])
            for role, load in loads.items():
                family.add_metric([role], float(getattr(load, name)))
            yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """Names only, so registering does not scrape (and fails on a name clash at once)."""
        for name, doc in FIELDS:
            yield GaugeMetricFamily(POOL_PREFIX + name, doc, labels=[ROLE_LABEL])
