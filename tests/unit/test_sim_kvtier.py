"""The simulator's shared KV tier: LRU capacity, write-through, fetch timing from the one cost
model, and the router's tier-aware scoring fed by `redis` events."""

from __future__ import annotations

import pytest

from mainsail.sim.cost import GPUProfile
from mainsail.sim.kvtier import SimSharedTier, TierSettings, cost_model
from mainsail.sim.metrics import SLOTargets, summarise
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
    for w in run.workers:
        assert w.tier is run.tier
    assert run.tier is not None and len(run.tier) >= 2000 // 16 - 1
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
