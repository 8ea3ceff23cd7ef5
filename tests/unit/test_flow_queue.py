"""The router's queue discipline (`FlowQueue`): bands, fairness across tenants, deadlines
within one, bounds and shedding — examples, then invariants under random operations."""

from __future__ import annotations

import copy

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mainsail.router.scheduling.flow import FlowLimits, FlowQueue, Ticket

BIG = FlowLimits(max_total=1000, max_per_band=1000, max_per_flow=1000)


def drain(queue: FlowQueue) -> list[Ticket]:
    out = []
    while len(queue):
        out.append(queue.pop_head())
    return out


def test_higher_band_first_then_fair_across_tenants_then_deadline() -> None:
    q = FlowQueue(BIG)
    for i in range(10):
        q.offer(0, "heavy", deadline=100 - i)  # later arrivals have earlier deadlines
    q.offer(0, "light", deadline=50)
    q.offer(0, "light", deadline=40)
    q.offer(5, "vip", deadline=1000)
    order = drain(q)
    assert order[0].flow == "vip"
    flows = [t.flow for t in order[1:]]
    # The light tenant is not behind the heavy one's ten: they alternate.
    assert flows[:4] in (["heavy", "light", "heavy", "light"], ["light", "heavy", "light", "heavy"])
    heavy = [t.deadline for t in order if t.flow == "heavy"]
    assert heavy == sorted(heavy)
    assert [t.deadline for t in order if t.flow == "light"] == [40, 50]


def test_a_newcomer_is_served_within_one_round() -> None:
    q = FlowQueue(BIG)
    for i in range(5):
        q.offer(0, "a", i)
        q.offer(0, "b", i)
    q.pop_head()
    q.pop_head()
    q.offer(0, "c", 0)
    assert "c" in [q.pop_head().flow for _ in range(3)]


def test_flow_bound_refuses_without_displacing() -> None:
    q = FlowQueue(FlowLimits(max_total=10, max_per_band=10, max_per_flow=2))
    assert q.offer(0, "a", 0).ticket and q.offer(0, "a", 0).ticket
    offer = q.offer(0, "a", 0)
    assert offer.ticket is None and "tenant" in offer.reason and not offer.shed
    assert q.offer(0, "b", 0).ticket is not None


def test_full_queue_sheds_the_lowest_band_first() -> None:
    q = FlowQueue(FlowLimits(max_total=3, max_per_band=3, max_per_flow=3))
    low = q.offer(1, "x", 0).ticket
    mid = q.offer(2, "x", 0).ticket
    mid2 = q.offer(2, "y", 0).ticket
    offer = q.offer(3, "z", 0)
    assert offer.ticket is not None and offer.shed == (low,)
    offer = q.offer(3, "z", 0)
    assert offer.shed in ((mid,), (mid2,))
    # Same band and full: refused, nobody displaced.
    q.offer(3, "z", 0)
    refused = q.offer(3, "w", 0)
    assert refused.ticket is None and not refused.shed


def test_sheddable_requests_only_use_spare_capacity() -> None:
    q = FlowQueue(BIG)
    s1 = q.offer(-1, "batch", 0).ticket
    assert s1 is not None
    offer = q.offer(0, "web", 0)
    assert offer.shed == (s1,)
    assert q.offer(-1, "batch", 0).ticket is None


def test_remove_and_limits_validation() -> None:
    q = FlowQueue(BIG)
    t = q.offer(0, "a", 0).ticket
    assert t is not None and t in q
    q.remove(t)
    q.remove(t)
    assert len(q) == 0 and q.head() is None
    with pytest.raises(IndexError):
        q.pop_head()
    with pytest.raises(ValueError, match="max_per_flow"):
        FlowLimits(max_total=5, max_per_band=2, max_per_flow=3)


_offer = st.tuples(
    st.just("offer"),
    st.sampled_from([0, 0, 0, 1, 2, -1]),
    st.sampled_from("aaabbcd"),
    st.integers(0, 5),
)
ops = st.lists(
    st.one_of(
        _offer,
        _offer,
        st.tuples(st.just("pop"), st.just(0), st.just(""), st.just(0)),
        st.tuples(st.just("remove"), st.integers(0, 30), st.just(""), st.just(0)),
    ),
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@example(
    ops=[("offer", 0, "a", 0)] * 3 + [("offer", 0, "b", 0)] + [("pop", 0, "", 0)] * 3,
    limits=(9, 8, 8),
)
@given(ops=ops, limits=st.tuples(st.integers(1, 12), st.integers(1, 8), st.integers(1, 8)))
def test_invariants(ops: list[tuple[str, int, str, int]], limits: tuple[int, int, int]) -> None:
    total, band, flow = limits
    q = FlowQueue(FlowLimits(total, max(band, flow), flow))
    waiting: list[Ticket] = []
    # Services per flow since both of a pair were continuously waiting in the same band.
    served_since: dict[tuple[int, str, str], list[int]] = {}
    for op, a, f, d in ops:
        if op == "offer":
            offer = q.offer(a, f, d)
            for gone in offer.shed:
                assert gone.priority < a or (gone.priority < 0 <= a)
                waiting.remove(gone)
            if offer.ticket is not None:
                waiting.append(offer.ticket)
        elif op == "pop" and waiting:
            top = max(t.priority for t in waiting)
            head = q.pop_head()
            # Higher band always first; earliest deadline first within the flow.
            assert head.priority == top
            mine = [t for t in waiting if t.flow == head.flow and t.priority == top]
            assert (head.deadline, head.seq) == min((t.deadline, t.seq) for t in mine)
            for (p, x, y), counts in served_since.items():
                if p == top and head.flow in (x, y):
                    counts[0 if head.flow == x else 1] += 1
            waiting.remove(head)
        elif op == "remove" and waiting:
            victim = waiting.pop(a % len(waiting))
            q.remove(victim)
        # The service order it reports is the one it serves, and reading it changes nothing.
        assert q.in_order() == drain(copy.deepcopy(q))
        # Bounds are never exceeded.
        assert len(q) == len(waiting) <= total
        for p in {t.priority for t in waiting}:
            assert q.band_count(p) <= max(band, flow)
            for name in "abcd":
                assert q.flow_count(p, name) <= flow
        if any(t.priority >= 0 for t in waiting):
            assert all(t.priority >= 0 for t in waiting)  # sheddable never wait under pressure
        # No starvation: two flows waiting all along in one band are served in turn (their
        # services differ by at most one request of lag each).
        present = {(t.priority, t.flow) for t in waiting}
        for key in list(served_since):
            p, x, y = key
            if (p, x) not in present or (p, y) not in present:
                del served_since[key]
            else:
                assert abs(served_since[key][0] - served_since[key][1]) <= 2
        for p, x in present:
            for p2, y in present:
                if p == p2 and x < y:
                    served_since.setdefault((p, x, y), [0, 0])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("aaab"), st.integers(0, 2)), max_size=40))
def test_tenants_waiting_together_are_served_in_turn(arrivals: list[tuple[str, int]]) -> None:
    """One band, tenants arriving in bursts, ``pops`` services after each arrival: while two
    tenants both wait, their services differ by at most 2 (start-time fair queuing's bound
    for one-unit requests: one each of lag), however large either one's burst."""
    q = FlowQueue(BIG)
    waiting = {"a": 0, "b": 0}
    served = {"a": 0, "b": 0}
    for flow, pops in arrivals:
        q.offer(0, flow, deadline=0)
        waiting[flow] += 1
        for _ in range(pops):
            if not len(q):
                break
            if not (waiting["a"] and waiting["b"]):
                served = {"a": 0, "b": 0}  # the window starts when both wait
            head = q.pop_head().flow
            waiting[head] -= 1
            served[head] += 1
            assert abs(served["a"] - served["b"]) <= 2, served
