"""Simulated KV cache: reservation, prefix reuse by hash, LRU eviction and the events it emits."""

from __future__ import annotations

import pytest

from mainsail.sim.kvcache import SimKVCache

pytestmark = pytest.mark.unit


class Events:
    def __init__(self) -> None:
        self.log: list[tuple[str, str, list[int]]] = []

    def __call__(self, worker_id: str, kind: str, hashes: list[int], tier: str = "device") -> None:
        assert tier == "device"  # SimKVCache models device memory only
        self.log.append((worker_id, kind, list(hashes)))


def test_commit_publishes_and_a_later_request_reuses_the_prefix() -> None:
    ev = Events()
    kv = SimKVCache("w", 10, ev)
    assert kv.reserve([1, 2, 3], total_blocks=4) == 0
    kv.commit([1, 2, 3])
    assert ev.log == [("w", "stored", [1, 2, 3])]
    kv.release([1, 2, 3], private_blocks=1)
    assert (kv.used_blocks, kv.cached_blocks) == (0, 3)
    assert kv.prefix_hits([1, 2, 9]) == 2
    assert kv.reserve([1, 2, 9], total_blocks=4) == 2
    assert kv.used_blocks == 4


def test_eviction_is_lru_tail_first_and_reported() -> None:
    ev = Events()
    kv = SimKVCache("w", 4, ev)
    kv.reserve([1, 2, 3], 3)
    kv.commit([1, 2, 3])
    kv.release([1, 2, 3], 0)
    assert kv.reserve([7], 2) == 0  # needs 2 of 4 blocks: evicts the tail (3) first
    assert ev.log[-1] == ("w", "removed", [3])
    assert kv.prefix_hits([1, 2, 3]) == 2
    assert kv.evictions == 1


def test_reserve_refuses_what_cannot_fit_and_changes_nothing() -> None:
    kv = SimKVCache("w", 4, None)
    kv.reserve([1, 2], 3)
    kv.commit([1, 2])
    assert kv.reserve([5], 2) is None
    assert kv.used_blocks == 3
    with pytest.raises(ValueError):
        SimKVCache("w", 0, None)


def test_pinned_blocks_are_never_evicted_and_shared_blocks_count_once() -> None:
    kv = SimKVCache("w", 6, None)
    kv.reserve([1, 2], 2)
    kv.commit([1, 2])
    assert kv.reserve([1, 2], 3) == 2  # second user shares both blocks
    assert kv.used_blocks == 3
    kv.release([1, 2], 0)
    assert kv.cached_blocks == 0  # still pinned by the second request
    assert kv.reserve([8, 9], 3) == 0
    assert kv.used_blocks == 6
