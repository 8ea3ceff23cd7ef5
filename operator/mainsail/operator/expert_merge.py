"""One deployment's expert-parallel signals from several router replicas, each worker counted
once: the expert scaler's counterpart of `signal_merge` (which it uses for the pool fields).

Why not a sum: every worker registers with, and heartbeats to, every router replica, so each
replica's expert gauges (`mainsail_router_expert_*{role}`) already describe the whole pool;
what a replica alone knows is the requests it holds (`mainsail_router_queued_requests`), and
`signal_merge.merge_signals` adds those up. The expert figures, all from worker heartbeats:

    current    lowest degree a worker runs   min over replicas (the lowest over the union
                                             of the workers they heard: exact)
    switching  workers moving degree         max over replicas (the same workers)
    tokens     recent tokens per expert      max per expert (each replica holds one of the
               (decayed by the worker)       same workers' recent heartbeats: never a worker
                                             twice; for a growing load the freshest)

A replica that has not yet heard some worker (it just started) reports less tokens and fewer
switching workers, which the max ignores, and the lowest degree of the workers it did hear,
which the others heard too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mainsail.operator.autoscale_policy import PoolSignals
from mainsail.operator.expert_parallel_policy import ExpertSignals
from mainsail.operator.signal_merge import merge_signals


@dataclass(frozen=True)
class ExpertFigures:
    """One role's expert figures as one router replica exports them."""

    current: int
    """The lowest expert-parallel degree the role's workers run."""
    switching: int = 0
    """The role's workers still moving to another degree."""
    tokens: tuple[float, ...] = ()
    """Recent tokens routed to each expert (decayed by the worker), summed over the role's
    workers."""


@dataclass(frozen=True)
class ExpertReading:
    """One router replica's scrape: each role's pool load and, for roles with a sharded
    mixture-of-experts worker, its expert figures."""

    pools: Mapping[str, PoolSignals]
    experts: Mapping[str, ExpertFigures] = field(default_factory=dict)


def merge_figures(readings: Iterable[Mapping[str, ExpertFigures]]) -> dict[str, ExpertFigures]:
    """Role -> expert figures from each replica's (see the module doc)."""
    merged: dict[str, ExpertFigures] = {}
    for reading in readings:
        for role, fig in reading.items():
            had = merged.get(role)
            if had is None:
                merged[role] = fig
                continue
            longest = max(len(had.tokens), len(fig.tokens))
            tokens = tuple(max(_at(had.tokens, e), _at(fig.tokens, e)) for e in range(longest))
            merged[role] = ExpertFigures(
                min(had.current, fig.current), max(had.switching, fig.switching), tokens
            )
    return merged


def _at(tokens: tuple[float, ...], expert: int) -> float:
    return tokens[expert] if expert < len(tokens) else 0.0


def expert_signals(readings: Iterable[ExpertReading]) -> dict[str, ExpertSignals]:
    """Role -> the policy's `ExpertSignals` from every replica read: pool fields merged by
    `signal_merge.merge_signals`, expert figures by `merge_figures`; only roles that some
    replica reports a degree >= 1 for and whose pool load is known."""
    readings = list(readings)
    pools = merge_signals(r.pools for r in readings)
    out: dict[str, ExpertSignals] = {}
    for role, fig in merge_figures(r.experts for r in readings).items():
        pool = pools.get(role)
        if pool is None or fig.current < 1:
            continue
        out[role] = ExpertSignals(
            current=fig.current,
            workers=pool.workers,
            running=pool.running,
            waiting=pool.waiting + pool.queued,
            expert_load=tuple(max(0.0, t) for t in fig.tokens),
            switching=fig.switching > 0,
        )
    return out
