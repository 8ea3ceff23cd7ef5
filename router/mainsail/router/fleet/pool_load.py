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

Sharded mixture-of-experts pools (elastic expert parallelism, docs/parallelism.md) add, for
the operator's expert-parallel autoscaler (only roles with such a worker appear):

    mainsail_router_expert_parallel{role}            lowest degree the role's workers run
    mainsail_router_expert_parallel_switching{role}  workers still moving to another degree
    mainsail_router_expert_tokens{role,expert}       recent tokens routed to each expert
                                                     (decayed by the worker), summed
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mainsail.router.fleet.registry import WorkerEntry
from mainsail.spec.pool_signals import (
    EXPERT_LABEL,
    EXPERT_PARALLEL,
    EXPERT_SWITCHING,
    EXPERT_TOKENS,
    POOL_FIELDS,
    POOL_PREFIX,
    ROLE_LABEL,
)

ROLES = ("unified", "encode", "prefill", "decode")


@dataclass
class RoleLoad:
    """Sums over one role's registered workers."""

    running: int = 0
    waiting: int = 0
    outstanding: int = 0
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0


@dataclass
class RoleExperts:
    """One role's sharded mixture-of-experts workers: degree, switches, expert load."""

    degree: int = 0  # the lowest reported; 0 until a worker reports one
    switching: int = 0
    tokens: list[float] = field(default_factory=list)

    def add(self, degree: int, target: int, load: Sequence[float]) -> None:
        self.degree = degree if not self.degree else min(self.degree, degree)
        self.switching += int(target != degree)
        if len(self.tokens) < len(load):
            self.tokens += [0.0] * (len(load) - len(self.tokens))
        for expert, tokens in enumerate(load):
            self.tokens[expert] += tokens


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


def role_experts(entries: Iterable[WorkerEntry]) -> dict[str, RoleExperts]:
    """Role -> its sharded MoE workers' degree and expert load (roles without one absent)."""
    out: dict[str, RoleExperts] = {}
    for entry in entries:
        snap = entry.load
        if snap.expert_parallel > 0:
            role = out.setdefault(entry.info.role or "unified", RoleExperts())
            role.add(snap.expert_parallel, snap.expert_parallel_target, snap.expert_load)
    return out


class PoolLoadCollector(Collector):
    """Yields the gauges above from ``entries()`` (the registry's workers) at each scrape."""

    def __init__(self, entries: Callable[[], Iterable[WorkerEntry]]) -> None:
        self._entries = entries

    def collect(self) -> Iterator[GaugeMetricFamily]:
        entries = list(self._entries())
        loads = role_loads(entries)
        for name, doc in FIELDS:
            family = GaugeMetricFamily(POOL_PREFIX + name, doc, labels=[ROLE_LABEL])
            for role, load in loads.items():
                family.add_metric([role], float(getattr(load, name)))
            yield family
        experts = role_experts(entries)
        degree, switching, tokens = _expert_families()
        for role, ep in experts.items():
            degree.add_metric([role], float(ep.degree))
            switching.add_metric([role], float(ep.switching))
            for expert, value in enumerate(ep.tokens):
                tokens.add_metric([role, str(expert)], value)
        yield from (degree, switching, tokens)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """Names only, so registering does not scrape (and fails on a name clash at once)."""
        for name, doc in FIELDS:
            yield GaugeMetricFamily(POOL_PREFIX + name, doc, labels=[ROLE_LABEL])
        yield from _expert_families()


def _expert_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily(
            EXPERT_PARALLEL,
            "Lowest expert-parallel degree the role's sharded MoE workers run.",
            labels=[ROLE_LABEL],
        ),
        GaugeMetricFamily(
            EXPERT_SWITCHING,
            "The role's workers still moving to another expert-parallel degree.",
            labels=[ROLE_LABEL],
        ),
        GaugeMetricFamily(
            EXPERT_TOKENS,
            "Recent tokens the gate routed to each expert (decayed by the worker: a token's "
            "weight halves every 60 s), summed over the role's workers.",
            labels=[ROLE_LABEL, EXPERT_LABEL],
        ),
    )
