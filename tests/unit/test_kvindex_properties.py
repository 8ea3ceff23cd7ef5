"""Properties of the KV indexes against a brute-force reference model (Hypothesis).

Reference: a dict from (worker, tier) to the set of hashes held, with no cap. A worker's prefix
is the count of leading request blocks it holds in any selected tier.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.router.kvindex import TIERS, ApproximateIndex, GlobalKVIndex

pytestmark = pytest.mark.unit

WORKERS = ("a", "b", "c", "d")
hashes = st.lists(st.integers(0, 11), max_size=8)
Step = tuple[str, str, list[int], str]
Model = dict[tuple[str, str], set[int]]
op: st.SearchStrategy[Step] = st.one_of(
    st.tuples(st.just("stored"), st.sampled_from(WORKERS), hashes, st.sampled_from(TIERS)),
    st.tuples(st.just("removed"), st.sampled_from(WORKERS), hashes, st.sampled_from(TIERS)),
    st.tuples(st.just("replace"), st.sampled_from(WORKERS), hashes, st.sampled_from(TIERS)),
    st.tuples(st.just("drop"), st.sampled_from(WORKERS), st.just([]), st.just("device")),
    st.tuples(st.just("lookup"), st.just(""), hashes, st.just("device")),
)
ops = st.lists(op, max_size=40)
tier_choice = st.sampled_from([("device", "host"), ("device",), ("redis",), TIERS])


def run(index: GlobalKVIndex, model: Model, steps: Sequence[Step]) -> None:
    for kind, worker, hs, tier in steps:
        if kind in ("stored", "removed"):
            index.apply_event(worker, kind, hs, tier)
            held = model.setdefault((worker, tier), set())
            held.update(hs) if kind == "stored" else held.difference_update(hs)
        elif kind == "replace":
            index.replace_worker(worker, hs, tier)
            model[(worker, tier)] = set(hs)
        elif kind == "drop":
            index.remove_worker(worker)
            for key in [k for k in model if k[0] == worker]:
                del model[key]
        else:
            index.longest_prefix(hs)


def reference_prefix(model: Model, request: Sequence[int], tiers: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for worker in WORKERS:
        held = set[int]().union(*(model.get((worker, t), set()) for t in tiers))
        depth = 0
        while depth < len(request) and request[depth] in held:
            depth += 1
        if depth:
            out[worker] = depth
    return out


@settings(max_examples=100, deadline=None)
@given(ops, hashes, tier_choice)
def test_lookup_equals_brute_force_when_nothing_is_evicted(
    steps: list[Step], request: list[int], tiers: tuple[str, ...]
) -> None:
    index, model = GlobalKVIndex(max_blocks=1000), Model()
    run(index, model, steps)
    assert index.longest_prefix(request, tiers=tiers) == reference_prefix(model, request, tiers)
    assert index.stats().holders == sum(len(v) for v in model.values())
    assert index.stats().entries == len(set[int]().union(*model.values()))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), ops, hashes, tier_choice)
def test_a_capped_index_never_exceeds_its_cap_and_never_invents(
    cap: int,
    steps: list[Step],
    request: list[int],
    tiers: tuple[str, ...],
) -> None:
    index, model = GlobalKVIndex(max_blocks=cap), Model()
    for step in steps:
        run(index, model, [step])
        assert index.stats().entries <= cap
    found = index.longest_prefix(request, tiers=tiers)
    truth = reference_prefix(model, request, tiers)
    assert all(depth <= truth.get(worker, 0) for worker, depth in found.items())
    for h in set(request):
        assert index.holders(h) <= {(w, t) for (w, t), held in model.items() if h in held}


@settings(max_examples=100, deadline=None)
@given(ops, st.sampled_from(WORKERS), st.integers(1, 20))
def test_remove_worker_leaves_no_trace(steps: list[Step], gone: str, cap: int) -> None:
    index, model = GlobalKVIndex(max_blocks=cap), Model()
    run(index, model, steps)
    index.remove_worker(gone)
    assert gone not in index.workers()
    everything = list(range(12))
    assert all(gone not in index.longest_prefix([h], tiers=TIERS) for h in everything)
    assert all(w != gone for h in everything for w, _ in index.holders(h))
    for worker in WORKERS:
        index.remove_worker(worker)
    stats = index.stats()
    assert (stats.entries, stats.holders, stats.workers) == (0, 0, 0)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(WORKERS), hashes), max_size=30), hashes, st.integers(1, 8)
)
def test_approximate_index_stays_capped_and_consistent(
    dispatches: list[tuple[str, list[int]]], request: list[int], cap: int
) -> None:
    index = ApproximateIndex(max_blocks=cap, clock=lambda: 0.0)
    model: Model = {}
    for worker, hs in dispatches:
        index.record_dispatch(worker, hs)
        model.setdefault((worker, "device"), set()).update(hs)
        assert index.stats().entries <= cap
    found = index.longest_prefix(request)
    truth = reference_prefix(model, request, ("device",))
    assert all(depth <= truth.get(worker, 0) for worker, depth in found.items())
    if cap >= 12:
        assert found == truth
