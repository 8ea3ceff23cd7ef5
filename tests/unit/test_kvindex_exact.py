"""The exact global KV index: events, resync, worker removal, tiers, cap and LRU eviction."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest

from mainsail.router.kvindex import GlobalKVIndex, KVIndex

pytestmark = pytest.mark.unit


def test_longest_prefix_per_worker() -> None:
    index = GlobalKVIndex()
    index.apply_event("a", "stored", [1, 2, 3])
    index.apply_event("b", "stored", [1, 2])
    index.apply_event("c", "stored", [2, 3])  # no first block: no prefix
    assert index.longest_prefix([1, 2, 3, 4]) == {"a": 3, "b": 2}
    assert index.longest_prefix([9, 1, 2]) == {}
    assert index.longest_prefix([]) == {}


def test_a_gap_ends_the_prefix() -> None:
    index = GlobalKVIndex()
    index.apply_event("a", "stored", [1, 2, 3, 4])
    index.apply_event("a", "removed", [2])
    assert index.longest_prefix([1, 2, 3, 4]) == {"a": 1}


@pytest.mark.parametrize(
    ("tiers", "expected"),
    [
        (("device", "host"), {"a": 3}),  # default: local tiers, any mix of them
        (("device",), {"a": 1}),
        (("redis",), {"b": 2}),
        (("device", "host", "redis"), {"a": 3, "b": 2}),
    ],
)
def test_tiers_select_what_counts_as_held(tiers: tuple[str, ...], expected: dict[str, int]) -> None:
    index = GlobalKVIndex()
    index.apply_event("a", "stored", [1], "device")
    index.apply_event("a", "stored", [2, 3], "host")
    index.apply_event("b", "stored", [1, 2], "redis")
    assert index.longest_prefix([1, 2, 3], tiers=tiers) == expected
    assert index.holders(1) == {("a", "device"), ("b", "redis")}


def test_replace_worker_resyncs_one_tier() -> None:
    index = GlobalKVIndex()
    index.apply_event("a", "stored", [1, 2, 3], "device")
    index.apply_event("a", "stored", [7], "host")
    index.replace_worker("a", [1, 5], "device")
    assert index.holders(2) == frozenset()
    assert index.holders(7) == {("a", "host")}
    assert index.longest_prefix([1, 5]) == {"a": 2}
    assert index.stats().entries == 3  # 1, 5, 7


def test_remove_worker_leaves_no_trace_and_frees_its_slot() -> None:
    index = GlobalKVIndex()
    index.apply_event("a", "stored", [1, 2], "device")
    index.apply_event("a", "stored", [3], "redis")
    index.apply_event("b", "stored", [1])
    index.remove_worker("a")
    index.remove_worker("never-seen")
    assert index.workers() == {"b"}
    assert index.longest_prefix([1, 2]) == {"b": 1}
    stats = index.stats()
    assert (stats.entries, stats.holders, stats.workers) == (1, 1, 1)
    index.apply_event("c", "stored", [1, 2])  # reuses a's slot without inheriting its blocks
    assert index.longest_prefix([1, 2, 3], tiers=("device", "redis")) == {"b": 1, "c": 2}


def test_cap_evicts_least_recently_useful() -> None:
    index = GlobalKVIndex(max_blocks=3)
    index.apply_event("a", "stored", [1, 2, 3])
    index.longest_prefix([1])  # a lookup makes block 1 recently useful
    index.apply_event("b", "stored", [4])  # evicts 2, the least recently useful
    assert index.holders(2) == frozenset()
    assert index.longest_prefix([1, 2]) == {"a": 1}
    assert index.holders(4) == {("b", "device")}
    stats = index.stats()
    assert (stats.entries, stats.evictions, stats.max_entries) == (3, 1, 3)


def test_removing_unknown_blocks_is_harmless() -> None:
    index = GlobalKVIndex()
    index.apply_event("a", "removed", [1])
    index.apply_event("a", "stored", [1])
    index.apply_event("a", "removed", [1, 1, 99])
    assert index.stats().entries == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda i: i.apply_event("a", "evicted", [1]), "event kind"),
        (lambda i: i.apply_event("a", "stored", [1], "disk"), "tier"),
        (lambda i: i.longest_prefix([1], tiers=("ssd",)), "tier"),
        (lambda i: i.longest_prefix([1], tiers=()), "tiers"),
        (lambda i: GlobalKVIndex(max_blocks=0), "max_blocks"),
    ],
)
def test_bad_input_raises_value_error(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(GlobalKVIndex())  # type: ignore[operator]


def test_satisfies_the_protocol_and_labels_its_mode() -> None:
    index: KVIndex = GlobalKVIndex()
    assert index.mode == "exact"
    assert index.stats().mode == "exact"


def test_many_workers_match_brute_force() -> None:
    """Masks wider than a machine word, sparse and dense departures alike."""
    index = GlobalKVIndex()
    prompt = list(range(100, 112))
    depth = {f"w{i}": (i * 7) % 13 for i in range(300)}
    for worker, d in depth.items():
        index.apply_event(worker, "stored", prompt[:d])
    index.remove_worker("w5")
    del depth["w5"]
    assert index.longest_prefix(prompt) == {w: d for w, d in depth.items() if d}


def test_long_prompts_match_brute_force() -> None:
    """Prompts longer than the first walked chunk, gaps, misses and 150 workers (3 words)."""
    rng = random.Random(7)
    index = GlobalKVIndex()
    prompt = [rng.getrandbits(64) for _ in range(300)]
    held: dict[str, set[int]] = {}
    for i in range(150):
        worker = f"w{i}"
        blocks = prompt[: rng.randint(0, len(prompt))]
        index.apply_event(worker, "stored", blocks)
        gaps = rng.sample(blocks, min(len(blocks), rng.choice([0, 0, 1])))
        index.apply_event(worker, "removed", gaps)
        held[worker] = set(blocks) - set(gaps)

    def truth(request: list[int]) -> dict[str, int]:
        out = {}
        for worker, blocks in held.items():
            depth = 0
            while depth < len(request) and request[depth] in blocks:
                depth += 1
            if depth:
                out[worker] = depth
        return out

    unknown = rng.getrandbits(64)
    for request in (prompt, prompt[:65], [*prompt[:200], unknown, *prompt[201:]], [unknown]):
        assert index.longest_prefix(request) == truth(request)
    assert index.longest_prefix(prompt, tiers=("redis",)) == {}


def test_an_add_never_evicts_a_block_it_names() -> None:
    index = GlobalKVIndex(max_blocks=3)
    index.apply_event("a", "stored", [1, 2, 3])
    index.apply_event("b", "stored", [4, 1])  # 1 is the oldest, but this add refreshes it
    assert index.holders(1) == {("a", "device"), ("b", "device")}
    assert index.holders(2) == frozenset()
    assert index.stats().evictions == 1


def test_eviction_order_is_exact_across_many_evictions() -> None:
    """Against an ordered-dict LRU model, with lookups refreshing entries along the way."""
    rng = random.Random(3)
    cap = 200
    index = GlobalKVIndex(max_blocks=cap)
    model: OrderedDict[int, None] = OrderedDict()
    evicted = 0
    for step in range(3000):
        if model and rng.random() < 0.3:
            h = rng.choice(list(model))
            index.longest_prefix([h])
            model.move_to_end(h)
            continue
        h = rng.randrange(5000)
        index.apply_event("a", "stored", [h])
        if h in model:
            model.move_to_end(h)
        else:
            if len(model) == cap:
                model.popitem(last=False)
                evicted += 1
            model[h] = None
        if step % 100 == 0:
            assert {h for h in range(5000) if index.holders(h)} == set(model)
    assert {h for h in range(5000) if index.holders(h)} == set(model)
    assert index.stats().evictions == evicted


def test_the_redis_tier_stays_inside_the_same_memory_bound() -> None:
    """Issue 15: tier-aware scoring adds `redis` holders to the same index, under the same
    cap. A block held on a device and in Redis is one entry; a flood of tier events evicts
    like device ones; the footprint stops growing once the table is full, and with every tier
    in use it is at most one more mask plane per tier than with devices alone."""
    cap, workers = 2_000, [f"w{i}" for i in range(8)]
    index = GlobalKVIndex(max_blocks=cap)
    for i, worker in enumerate(workers):
        index.apply_event(worker, "stored", range(i * cap, (i + 1) * cap))
    device_only = index.stats()
    assert device_only.entries == cap
    index.apply_event("w0", "stored", range(7 * cap, 8 * cap), "redis")  # the same blocks
    both = index.stats()
    assert both.entries == cap and both.holders == 2 * cap
    for round_ in range(5):  # a flood of new tier-held blocks, as a busy Redis tier reports
        start = (10 + round_) * cap
        for worker in workers:
            index.apply_event(worker, "stored", range(start, start + cap), "redis")
        stats = index.stats()
        assert stats.entries <= cap
        if round_ == 0:
            full = stats.approx_bytes
        assert stats.approx_bytes == full  # bounded: nothing grows past the cap
    mask_plane = cap * 8  # one uint64 word per row: 8 worker slots fit in one word
    assert full <= device_only.approx_bytes + mask_plane  # the redis plane, nothing more
    assert index.longest_prefix(range(14 * cap, 14 * cap + 3), tiers=("redis",)) == {
        w: 3 for w in workers
    }
