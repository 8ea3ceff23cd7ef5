"""A worker's KV event snapshot carries its shared tier too, so a router that (re)connects late
— or a second router replica — learns which prefixes it can price at the fetch cost."""

from __future__ import annotations

import pytest

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.fleet.kv_events import KVEventFeed
from mainsail.router.fleet.transport import GrpcTransport
from mainsail.router.kvindex import GlobalKVIndex
from mainsail.workers.kv_publisher import KVEventHub

pytestmark = pytest.mark.unit


def test_snapshot_has_a_redis_part_when_the_worker_has_a_tier() -> None:
    hub = KVEventHub("w", list, lambda: [1, 2], tier_snapshot=lambda: [1, 2, 3, 4])
    batch = hub.subscribe().get_nowait()
    assert [(e.kind, e.tier, list(e.block_hashes)) for e in batch.events] == [
        (pb.KVEvent.KIND_SNAPSHOT, pb.KV_TIER_DEVICE, [1, 2]),
        (pb.KVEvent.KIND_SNAPSHOT, pb.KV_TIER_REDIS, [1, 2, 3, 4]),
    ]
    no_tier = KVEventHub("w", list, lambda: [1], tier_snapshot=lambda: None)
    assert len(no_tier.subscribe().get_nowait().events) == 1


async def test_the_router_index_replaces_each_tier_from_the_snapshot() -> None:
    index = GlobalKVIndex(max_blocks=100)
    index.apply_event("w", "stored", [9], "redis")  # stale: the snapshot replaces it
    feed = KVEventFeed(index, GrpcTransport())
    hub = KVEventHub("w", list, lambda: [1, 2], tier_snapshot=lambda: [1, 2, 3, 4])
    feed.apply("w", hub.subscribe().get_nowait())
    assert index.longest_prefix([1, 2, 3, 4]) == {"w": 2}
    assert index.longest_prefix([1, 2, 3, 4], tiers=("redis",)) == {"w": 4}
    assert index.longest_prefix([9], tiers=("redis",)) == {}
    await feed.close()
