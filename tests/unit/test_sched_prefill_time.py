"""Tier-aware prefix pricing: the one cost model, shared tier hits, the `prefill-time` scorer.

A prefix is free on the worker's own device, costs the fetch from its shared Redis tier, and a
full recompute elsewhere; the scorer ranks workers by the resulting expected prefill seconds
(plus the prefill already queued there). Hypothesis checks the properties the router relies on:
prices never grow with more cached blocks, never exceed a full recompute, and the index that
feeds the tier hits stays inside its memory bound whatever mix of device and Redis events
arrives.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.router.kvindex import GlobalKVIndex
from mainsail.router.scheduling import (
    RequestInfo,
    SchedulingContext,
    WorkerSnapshot,
    shared_tier_hits,
)
from mainsail.router.scheduling.scorers.prefill_time import PrefillTimeScorer, expected_seconds
from mainsail.router.testing import idle_worker
from mainsail.spec.kv_cost import FETCH_POLICIES, FetchCostModel, FetchPolicy, prefix_seconds

pytestmark = pytest.mark.unit

# 16-token blocks of 1 MiB, 1 GB/s, 1 ms round trip; 1 ms per token to prefill: fetching one
# block (2.05 ms) beats recomputing it (16 ms).
MODEL = FetchCostModel(
    block_bytes=1 << 20, block_size=16, rtt_s=1e-3, bandwidth_bps=1e9, prefill_s_per_token=1e-3
)


def test_prefix_seconds_prices_device_free_tier_at_fetch_cost_rest_at_recompute() -> None:
    prompt = 16 * 10 + 5  # 10 full blocks and a partial one
    cold = prefix_seconds(MODEL, prompt, 0)
    assert cold == pytest.approx(prompt * 1e-3)
    device = prefix_seconds(MODEL, prompt, 10)
    assert device == pytest.approx(5 * 1e-3)
    tier = prefix_seconds(MODEL, prompt, 0, tier_blocks=10)
    assert tier == pytest.approx(MODEL.fetch_seconds(10) + 5 * 1e-3)
    assert device < tier < cold
    # A worker without a tier (policy None) cannot use tier blocks; "never" does not fetch.
    assert prefix_seconds(MODEL, prompt, 0, tier_blocks=10, policy=None) == cold
    assert prefix_seconds(MODEL, prompt, 0, tier_blocks=10, policy="never") == cold
    # The last token is always computed: a prompt of exactly 10 blocks reuses at most 9.
    assert prefix_seconds(MODEL, 160, 10) == pytest.approx(16 * 1e-3)


def test_slow_tier_is_priced_as_the_recompute_the_engine_would_choose() -> None:
    slow = FetchCostModel(1 << 20, 16, rtt_s=1e-3, bandwidth_bps=1e6, prefill_s_per_token=1e-3)
    prompt = 16 * 8
    assert not slow.should_fetch(7)
    assert prefix_seconds(slow, prompt, 0, tier_blocks=8) == prefix_seconds(slow, prompt, 0)
    # ... unless the worker's policy is "always": then it pays the (slow) fetch.
    forced = prefix_seconds(slow, prompt, 0, tier_blocks=8, policy="always")
    assert forced == pytest.approx(slow.fetch_seconds(7) + 16 * 1e-3)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 4000),
    st.integers(0, 300),
    st.integers(0, 300),
    st.integers(0, 300),
    st.sampled_from([*FETCH_POLICIES, None]),
)
def test_more_cached_blocks_never_cost_more_nor_more_than_recompute(
    prompt: int, local: int, tier: int, more: int, policy: FetchPolicy | None
) -> None:
    price = prefix_seconds(MODEL, prompt, local, tier, policy)
    assert price >= 0
    if policy != "always":
        assert price <= prefix_seconds(MODEL, prompt, 0) + 1e-12
    assert prefix_seconds(MODEL, prompt, local + more, tier, policy) <= price + 1e-12
    if policy == "auto":
        assert prefix_seconds(MODEL, prompt, local, tier + more, policy) <= price + 1e-12


def _ctx(
    hits: dict[str, int], tier: dict[str, int], **per_worker: dict[str, object]
) -> tuple[SchedulingContext, tuple[WorkerSnapshot, ...]]:
    ws = tuple(
        idle_worker(wid, kv_cost=MODEL, kv_tier_id="t1", kv_fetch_policy="auto", **changes)
        for wid, changes in per_worker.items()
    )
    info = RequestInfo("r", tuple(range(20)), prompt_tokens=16 * 20 + 3, max_tokens=8)
    return SchedulingContext(request=info, workers=ws, prefix_hits=hits, tier_hits=tier), ws


def test_device_warm_beats_redis_warm_beats_cold() -> None:
    ctx, ws = _ctx({"device": 20}, {"device": 20, "redis": 20}, device={}, redis={}, cold={})
    seconds = expected_seconds(ctx, ws)
    assert seconds[0] < seconds[1] < seconds[2]
    scores = PrefillTimeScorer().score(ctx, ws)
    assert scores[0] == 1.0 and scores[0] > scores[1] > scores[2] >= 0.0


def test_queued_prefill_outweighs_a_cached_prefix() -> None:
    # The device-warm worker has 2000 prompt tokens queued: 2 s, more than a cold prefill.
    ctx, ws = _ctx({"busy": 20}, {}, busy={"pending_prefill_tokens": 2000}, idle={})
    seconds = expected_seconds(ctx, ws)
    assert seconds[1] < seconds[0]


def test_unreported_cost_model_falls_back_to_defaults_with_the_request_block_size() -> None:
    ws = (idle_worker("a"), idle_worker("b"))
    info = RequestInfo("r", tuple(range(4)), prompt_tokens=64, max_tokens=1)
    ctx = SchedulingContext(request=info, workers=ws, prefix_hits={"a": 4})
    seconds = expected_seconds(ctx, ws)
    rate = FetchCostModel(0, 16).prefill_s_per_token
    assert seconds == pytest.approx([16 * rate, 64 * rate])


def test_shared_tier_hits_group_writers_by_tier_id() -> None:
    ws = (
        idle_worker("a", kv_tier_id="t1"),
        idle_worker("b", kv_tier_id="t1"),
        idle_worker("c", kv_tier_id="t2"),
        idle_worker("d"),  # no tier
    )
    tier_of = {"a": "t1", "b": "t1", "c": "t2", "d": "", "gone": "t2"}
    # a wrote 5 leading blocks into t1, c wrote 2 into t2; d has none and reads none.
    assert shared_tier_hits({"a": 5, "c": 2}, tier_of, ws) == {"a": 5, "b": 5, "c": 2}
    assert shared_tier_hits({"d": 9}, tier_of, ws) == {}
    assert shared_tier_hits({"unknown": 9}, tier_of, ws) == {}
    assert shared_tier_hits({}, tier_of, ws) == {}


WORKERS = ("a", "b", "c")
event = st.tuples(
    st.sampled_from(["stored", "removed"]),
    st.sampled_from(WORKERS),
    st.lists(st.integers(0, 15), max_size=6),
    st.sampled_from(["device", "redis"]),
)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 10), st.lists(event, max_size=50), st.lists(st.integers(0, 15), max_size=8))
def test_tier_aware_lookups_stay_within_the_index_bound_and_never_invent(
    cap: int, events: list[tuple[str, str, list[int], str]], request: list[int]
) -> None:
    index = GlobalKVIndex(max_blocks=cap)
    held: dict[tuple[str, str], set[int]] = {}
    for kind, worker, hashes, tier in events:
        index.apply_event(worker, kind, hashes, tier)
        s = held.setdefault((worker, tier), set())
        s.update(hashes) if kind == "stored" else s.difference_update(hashes)
        stats = index.stats()
        assert stats.entries <= cap  # one row per block, whatever the number of tiers
        assert stats.holders <= cap * len(WORKERS) * 2
        index.longest_prefix(request, tiers=("redis",))  # lookups touch, never grow
        assert index.stats().entries == stats.entries

    def truth(worker: str, tier: str) -> int:
        n = 0
        while n < len(request) and request[n] in held.get((worker, tier), set()):
            n += 1
        return n

    ws = tuple(idle_worker(w, kv_tier_id="t") for w in WORKERS)
    writers = index.longest_prefix(request, tiers=("redis",))
    assert all(depth <= truth(w, "redis") for w, depth in writers.items())
    shared = shared_tier_hits(writers, {w: "t" for w in WORKERS}, ws)
    best = max((truth(w, "redis") for w in WORKERS), default=0)
    assert all(depth <= best for depth in shared.values())
