"""Merging several router replicas' signals (`mainsail.operator.signal_merge`) and finding the
replicas (`mainsail.operator.router_replicas.replica_urls`): pure, so checked against a model
fleet with Hypothesis. The real API server and real routers: tests/integration/
test_operator_autoscale_cluster.py::test_the_autoscaler_and_status_read_every_router_replica."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mainsail.operator.autoscale_policy import PoolSignals
from mainsail.operator.router_replicas import replica_urls
from mainsail.operator.signal_merge import WORKER_FIELDS, merge_registered, merge_signals

pytestmark = pytest.mark.unit

ROLES = ("unified", "prefill", "decode")
worker = st.tuples(
    st.sampled_from(ROLES),
    st.integers(0, 50),  # running
    st.integers(0, 50),  # waiting
    st.integers(0, 1000),  # kv blocks used (of 1000)
)


def replica_view(workers: list[tuple[str, int, int, int]], queued: int) -> dict[str, PoolSignals]:
    """What one replica exports when it hears `workers` (per-role sums, as
    `mainsail.router.fleet.pool_load` does) and holds `queued` requests (router-wide, every
    role reads it, as `router_signals.parse_signals` does)."""
    out = {}
    for role in ROLES:
        mine = [w for w in workers if w[0] == role]
        out[role] = PoolSignals(
            workers=len(mine),
            running=sum(w[1] for w in mine),
            waiting=sum(w[2] for w in mine),
            queued=queued,
            kv_blocks_used=sum(w[3] for w in mine),
            kv_blocks_total=1000 * len(mine),
        )
    return out


@given(
    st.lists(worker, max_size=8),
    st.lists(st.integers(0, 20), min_size=1, max_size=4),
    st.randoms(use_true_random=False),
)
def test_replicas_hearing_every_worker_merge_to_the_pool_counted_once(
    workers: list[tuple[str, int, int, int]], queues: list[int], rnd: Any
) -> None:
    """The invariant: each worker counted once however many replicas hear it; each replica's
    held requests counted once; the order of replicas does not matter."""
    views = [replica_view(workers, q) for q in queues]
    rnd.shuffle(views)
    merged = merge_signals(views)
    truth = replica_view(workers, sum(queues))
    assert merged == truth


@given(
    st.lists(worker, max_size=8),
    st.lists(st.tuples(st.integers(0, 8), st.integers(0, 20)), min_size=1, max_size=4),
)
def test_a_lagging_replica_never_adds_and_never_hides_a_worker(
    workers: list[tuple[str, int, int, int]], seen: list[tuple[int, int]]
) -> None:
    """Replicas that have heard only some workers yet (a replica starting up): the merge is
    at least what any replica saw and at most the whole pool; registered is the fewest."""
    views = [replica_view(workers[:n], q) for n, q in seen]
    merged = merge_signals(views)
    whole = replica_view(workers, sum(q for _, q in seen))
    for role in ROLES:
        for name in WORKER_FIELDS:
            got = getattr(merged[role], name)
            assert max(getattr(v[role], name) for v in views) == got <= getattr(whole[role], name)
        assert merged[role].queued == whole[role].queued
    registered = merge_registered({r: v[r].workers for r in ROLES} for v in views)
    assert registered == {r: min(v[r].workers for v in views) for r in ROLES}


def test_merge_of_nothing_and_of_roles_one_replica_lacks() -> None:
    assert merge_signals([]) == {} and merge_registered([]) == {}
    one = {"decode": PoolSignals(2, 3, 4, 1, 10, 100)}
    two = {"prefill": PoolSignals(1, 0, 0, 2, 0, 50)}
    merged = merge_signals([one, two])
    assert merged["decode"] == PoolSignals(2, 3, 4, 1, 10, 100)
    assert merged["prefill"] == PoolSignals(1, 0, 0, 2, 0, 50)
    assert merge_registered([{"decode": 2}, {"decode": 2, "prefill": 1}]) == {
        "decode": 2,
        "prefill": 0,
    }


TEMPLATE = "http://{address}:{port}/metrics"


def test_replica_urls_from_endpoint_slices() -> None:
    slices = [
        {
            "addressType": "IPv4",
            "ports": [{"name": "fleet", "port": 50052}, {"name": "http", "port": 9000}],
            "endpoints": [
                {"addresses": ["10.0.0.2"], "conditions": {"ready": True, "serving": True},
                 "targetRef": {"kind": "Pod", "name": "r-b"}},
                {"addresses": ["10.0.0.1"], "conditions": {"ready": True},
                 "targetRef": {"kind": "Pod", "name": "r-a"}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": True, "serving": False},
                 "targetRef": {"kind": "Pod", "name": "r-starting"}},
                {"addresses": ["10.0.0.4"], "conditions": {"serving": True, "terminating": True},
                 "targetRef": {"kind": "Pod", "name": "r-leaving"}},
            ],
        },
        {  # the same pods' IPv6 slice: each pod read once
            "addressType": "IPv6",
            "ports": [{"name": "http", "port": 9000}],
            "endpoints": [
                {"addresses": ["fd00::5"], "targetRef": {"kind": "Pod", "name": "r-a"}},
                {"addresses": ["fd00::6"], "targetRef": {"kind": "Pod", "name": "r-v6"}},
            ],
        },
    ]  # fmt: skip
    assert replica_urls(slices, TEMPLATE, "ns", 8000) == [
        "http://10.0.0.1:9000/metrics",
        "http://10.0.0.2:9000/metrics",
        "http://[fd00::6]:9000/metrics",
    ]
    no_port = [{"endpoints": [{"addresses": ["10.1.1.1"]}]}]
    assert replica_urls(no_port, "http://{address}:{port}/{namespace}", "ns", 8000) == [
        "http://10.1.1.1:8000/ns"
    ]
    assert replica_urls([], TEMPLATE, "ns", 8000) == []
