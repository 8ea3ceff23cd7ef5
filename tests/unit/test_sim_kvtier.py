"""The simulator's shared KV tier: LRU capacity, write-through, fetch timing from the one cost
model, and the router's tier-aware scoring fed by `redis` events."""

from __future__ import annotations

import pytest

from mainsail.sim.cost import GPUProfile
from mainsail.sim.kvtier import SimSharedTier, TierSettings, cost_model
from mainsail.sim.metrics import SLOTargets, summarise
from mainsail.sim.request import SimRequest
from mainsail.sim.router_policy import RouterPolicy
from mainsail.sim.simulation import PolicyRun, SimSettings
from mainsail.sim.traces import TraceRequest
from mainsail.spec.routing_profile import RoutingProfile, ScorerWeight

pytestmark = pytest.mark.unit

P = GPUProfile(
    name="t",
    step_overhead_s=0.01,
    token_s=1e-4,
    attn_pair_s=1e-8,
    kv_read_s=1e-6,
    kv_capacity_tokens=100_000,
    max_num_seqs=8,
    max_batched_tokens=1024,
    kv_bytes_per_token=1024,
)


def test_tier_is_an_lru_of_blocks_and_probes_do_not_refresh() -> None:
    tier = SimSharedTier(3)
    assert tier.store([1, 2, 3]) == [1, 2, 3]
    assert tier.prefix([1, 2, 9, 3]) == 2
    tier.fetch([1])  # 1 is now the most recent: 2 goes first
    assert tier.store([4]) == [4]
    assert tier.prefix([2]) == 0 and tier.prefix([1, 3, 4]) == 3
    assert tier.evictions == 1
    with pytest.raises(ValueError):
        SimSharedTier(0)


def test_cost_model_is_the_engine_one_with_the_profile_prefill_rate() -> None:
    model = cost_model(P, 16, TierSettings(capacity_blocks=10, bandwidth_bps=1e9, rtt_s=1e-3))
    assert model.block_bytes == 16 * 1024 and model.block_size == 16
    assert model.prefill_s_per_token == pytest.approx(P.prefill_time(1024) / 1024)
    assert model.fetch_seconds(4) == pytest.approx(1e-3 + 4 * 16 * 1024 / 1e9)


def _run(tier_blocks: int, aware: bool = True) -> PolicyRun:
    # The same 2,000-token prompt twice, 5 s apart; prefill-time alone, so the second request
    # is placed by its price only. Two workers: whichever the second lands on, a tier holds it.
    trace = [TraceRequest(t, 2000, 2, (1, 2, 3, 4)) for t in (0.0, 5.0)]
    settings = SimSettings(
        workers=2,
        block_size=16,
        tier=TierSettings(capacity_blocks=tier_blocks, bandwidth_bps=1e9),
        tier_aware=aware,
        routing=RoutingProfile(scorers=[ScorerWeight(name="prefill-time", weight=1.0)]),
    )
    run = PolicyRun("ours", trace, P, settings)
    run.run()
    return run


def test_a_prompt_held_only_in_the_tier_is_fetched_and_priced_at_the_fetch() -> None:
    without = _run(0)
    first, second = without.requests
    assert second.cached_tokens > 0 and second.worker == first.worker  # device-warm wins
    # Evict the device copy: the second request then finds the prompt in the tier only.
    run = _run(10_000)
    (tier,) = run.tiers  # one store shared by both workers
    for w in run.workers:
        assert w.tier is tier
    assert len(tier) >= 2000 // 16 - 1
    first, second = run.requests
    assert second.tier_tokens == 0  # still on the device: device-warm beats the tier
    assert second.worker == first.worker


def test_device_eviction_leaves_the_tier_copy_and_the_fetch_is_timed() -> None:
    tiny = P.model_copy(update={"kv_capacity_tokens": 2100})  # one prompt at a time on device
    prompt = (1, 2, 3, 4)
    trace = [
        TraceRequest(0.0, 2000, 2, prompt),
        TraceRequest(2.0, 2000, 2, (7, 8, 9, 10)),  # evicts the first prompt from the device
        TraceRequest(5.0, 2000, 2, prompt),
    ]
    settings = SimSettings(workers=1, block_size=16, tier=TierSettings(capacity_blocks=10_000))
    run = PolicyRun("round-robin", trace, tiny, settings)
    result = run.run()
    _, _, again = run.requests
    reusable = (2000 - 1) // 16
    fetched = again.tier_tokens // 16
    # The eviction took the prompt's tail (blocks leave tail first): the head still hits on
    # the device, the rest comes from the tier, and only the last partial block is computed.
    assert 0 < fetched < reusable
    assert again.cached_tokens == reusable * 16
    # Parked for the fetch the one cost model prices.
    assert again.started - again.arrival >= run.workers[0].cost.fetch_seconds(fetched) - 1e-9
    summary = summarise(result, SLOTargets())
    assert summary.tier_hit_rate == pytest.approx(again.tier_tokens / 6000)


def test_stores_split_the_workers_into_contiguous_groups() -> None:
    tier = TierSettings(capacity_blocks=10, stores=2)
    assert [tier.store_of(i, 5) for i in range(5)] == [0, 0, 0, 1, 1]
    assert [TierSettings(capacity_blocks=1, stores=4).store_of(i, 4) for i in range(4)] == [
        0, 1, 2, 3,
    ]  # fmt: skip
    with pytest.raises(ValueError):
        TierSettings(stores=0)
    with pytest.raises(ValueError):
        tier.store_of(0, 1)  # more stores than workers


def _two_stores(aware: bool, seed: int) -> tuple[PolicyRun, list[int], int]:
    """Two workers, each with its own store; one prompt served (and written through) by one
    of them, then forgotten by the router's device index (as if evicted from the device)."""
    trace = [TraceRequest(0.0, 2000, 2, (1, 2, 3, 4))]
    settings = SimSettings(
        workers=2,
        block_size=16,
        seed=seed,
        tier=TierSettings(capacity_blocks=10_000, bandwidth_bps=1e9, stores=2),
        tier_aware=aware,
        routing=RoutingProfile(scorers=[ScorerWeight(name="prefill-time", weight=1.0)]),
    )
    run = PolicyRun("ours", trace, P, settings)
    run.run()
    hashes = run.hasher.block_hashes((1, 2, 3, 4), 2000)
    writer = run.requests[0].worker
    assert isinstance(run.policy, RouterPolicy)
    run.policy.on_kv_event(run.workers[writer].worker_id, "removed", hashes, "device")
    return run, hashes, writer


def test_a_block_is_a_fetch_only_for_its_own_store_and_tier_aware_scoring_goes_there() -> None:
    """Per-rack stores: the prompt is in the writer's store only (each worker advertises its
    store's tier id); tier-aware scoring sends the prompt back to that rack every time, while
    device-only scoring, which cannot tell the stores apart, spreads it over both."""
    chosen: dict[bool, set[int]] = {True: set(), False: set()}
    for seed in range(8):
        for aware in (True, False):
            run, hashes, writer = _two_stores(aware, seed)
            other = 1 - writer
            assert run.workers[writer].tier is run.tiers[writer]
            assert run.tiers[writer].prefix(hashes) == len(hashes)
            assert run.tiers[other].prefix(hashes) == 0  # not readable from the other rack
            ids = {w.snapshot().kv_tier_id for w in run.workers}
            assert ids == {"sim-redis-0", "sim-redis-1"}
            again = SimRequest(1, 10.0, 2000, 2, hashes)
            pick = run.policy.route(again, 10.0)
            assert pick is not None
            chosen[aware].add(0 if pick == writer else 1)
    assert chosen[True] == {0}  # always the rack whose store holds the prompt
    assert chosen[False] == {0, 1}  # a coin toss between the racks
