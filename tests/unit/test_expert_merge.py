"""Merging several router replicas' expert-parallel figures (`mainsail.operator.expert_merge`):
each replica's exposition rendered by the real router collector and parsed by the operator,
checked against a model fleet with Hypothesis. The pool-load half of the merge is
`signal_merge`'s (test_operator_signal_merge.py); the scaler reading every replica through
EndpointSlices: test_expert_scaler.py."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.operator.autoscale_policy import PoolSignals
from mainsail.operator.expert_merge import (
    ExpertFigures,
    ExpertReading,
    expert_signals,
    merge_figures,
)
from mainsail.operator.expert_signals import parse_expert_reading
from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.fleet.pool_load import PoolLoadCollector
from mainsail.router.fleet.registry import WorkerEntry
from mainsail.router.metrics import RouterMetrics

pytestmark = pytest.mark.unit

EXPERTS = 4
Worker = tuple[str, int, int, tuple[int, ...], int, int]  # role, ep, target, load, run, wait
worker = st.tuples(
    st.sampled_from(("unified", "decode")),
    st.integers(1, 4),  # degree it runs
    st.integers(1, 4),  # degree it is moving to (switching when it differs)
    st.tuples(*[st.integers(0, 10_000)] * EXPERTS),  # tokens per expert so far
    st.integers(0, 16),  # running
    st.integers(0, 16),  # waiting
)


def replica(workers: list[Worker], queued: int) -> ExpertReading:
    """What one router replica exports when it has heard `workers` and holds `queued`
    requests: the real collector's exposition, parsed as the operator parses a scrape."""
    entries = []
    for i, (role, ep, target, load, running, waiting) in enumerate(workers):
        info = pb.WorkerInfo(worker_id=f"w{i}", address=f"w{i}:1", role=role, model="m")
        snap = pb.LoadSnapshot(
            running=running, waiting=waiting, expert_parallel=ep,
            expert_parallel_target=target, expert_load=[float(t) for t in load],
        )  # fmt: skip
        entries.append(WorkerEntry(info=info, last_seen=0.0, load=snap))
    metrics = RouterMetrics()
    metrics.registry.register(PoolLoadCollector(lambda: entries))
    metrics.queued.set(queued)
    for role in ("unified", "decode"):
        metrics.workers.labels(role).set(sum(1 for w in workers if w[0] == role))
    return parse_expert_reading(metrics.render().decode())


@settings(max_examples=20, deadline=None)  # ~4 scrapes parsed per example: a few ms each
@given(
    st.lists(worker, min_size=1, max_size=6),
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 20)), min_size=0, max_size=2),
    st.integers(0, 20),
    st.randoms(use_true_random=False),
)
def test_replicas_merge_to_the_pool_counted_once(
    workers: list[Worker], lagging: list[tuple[int, int]], queued: int, rnd: Any
) -> None:
    """The invariant: with one replica that has heard every worker, and any others that have
    heard only some yet (a replica starting up), the merge is the whole pool with each
    worker counted once and each replica's held requests counted once, in any order."""
    views = [replica(workers, queued)] + [replica(workers[:n], q) for n, q in lagging]
    rnd.shuffle(views)
    truth = replica(workers, queued + sum(q for _, q in lagging))
    assert expert_signals(views) == expert_signals([truth])
    assert merge_figures(v.experts for v in views) == truth.experts


@settings(max_examples=15, deadline=None)
@given(st.lists(worker, min_size=1, max_size=6), st.integers(1, 4))
def test_identical_replicas_change_nothing_but_held_requests(
    workers: list[Worker], replicas: int
) -> None:
    view = replica(workers, 3)
    one, many = expert_signals([view]), expert_signals([view] * replicas)
    assert set(many) == set(one)
    for role, sig in one.items():
        assert many[role].waiting == sig.waiting + 3 * (replicas - 1)
        assert many[role].running == sig.running and many[role].workers == sig.workers
        assert many[role].current == sig.current and many[role].switching == sig.switching
        assert many[role].expert_load == sig.expert_load


def test_a_degree_mid_switch_and_roles_one_replica_lacks() -> None:
    """Replica a heard the worker before it moved 2 -> 4, replica b after: the lower degree
    and the longer, larger load vector; a role only b knows is kept; no pool load, no
    signals; a degree below 1 from a scrape is dropped."""
    pool = PoolSignals(1, 2, 0, 1, 0, 0)
    a = ExpertReading({"unified": pool}, {"unified": ExpertFigures(2, 1, (5.0, 7.0))})
    b = ExpertReading(
        {"unified": pool, "decode": pool},
        {"unified": ExpertFigures(4, 0, (6.0, 7.0, 1.0)), "decode": ExpertFigures(1)},
    )
    merged = expert_signals([a, b])
    assert merged["unified"].current == 2 and merged["unified"].switching
    assert merged["unified"].expert_load == (6.0, 7.0, 1.0)
    assert merged["unified"].waiting == 2 and merged["decode"].current == 1
    assert expert_signals([ExpertReading({}, {"unified": ExpertFigures(2)})]) == {}
    assert expert_signals([]) == {}
