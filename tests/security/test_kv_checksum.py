"""A KV block damaged in Redis never reaches the engine: it is a miss, counted.

Against a real server: blocks are stored through the tier, then one byte of one block's data
is flipped in Redis (SETRANGE, as a fault or a hostile writer would). Every read path — the
batched read of small blocks, the zero-copy read of large ones, and the portable decode —
stops at the damaged block (the blocks before it are served; it and those after are
misses), and `corrupt_blocks` counts it. Intact blocks still round-trip bit-exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import torch

from mainsail.cli.local.redis_server import RedisServer
from mainsail.workers.kvtier import BlockCodec, RedisKVTier

pytestmark = pytest.mark.security


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer(maxmemory="64mb") as srv:
        yield srv


def _codec(kv_heads: int) -> BlockCodec:
    return BlockCodec(
        layers=2, block_size=16, kv_heads=kv_heads, head_dim=16, dtype=torch.float32,
        fingerprint="fp",
    )  # fmt: skip


@pytest.mark.parametrize("kv_heads", [2, 16])  # 8 KiB blocks (batched), 64 KiB (zero-copy)
def test_a_flipped_byte_makes_the_block_a_counted_miss(server: RedisServer, kv_heads: int) -> None:
    codec = _codec(kv_heads)
    tier = RedisKVTier.from_url(server.url, "fp")
    blocks = {h: torch.randn(codec.shape) for h in (1, 2, 3, 4)}
    assert tier.store_rows(list(blocks), codec.header, codec.rows(list(blocks.values()))) == 4
    out = torch.empty((4, *codec.shape), dtype=torch.float32)
    assert tier.fetch_into([1, 2, 3, 4], codec.header, out) == 4
    assert all(torch.equal(out[i], blocks[i + 1]) for i in range(4))
    assert tier.stats.corrupt_blocks == 0

    raw = redis.Redis.from_url(server.url)
    key = tier.key(3)
    offset = len(codec.header) + 100  # inside the data
    byte = raw.getrange(key, offset, offset)
    assert isinstance(byte, bytes)  # no decode_responses: values come back as bytes
    raw.setrange(key, offset, bytes([byte[0] ^ 0x01]))

    out = torch.zeros((4, *codec.shape), dtype=torch.float32)
    assert tier.fetch_into([1, 2, 3, 4], codec.header, out) == 2  # 3 is damaged: a miss
    assert torch.equal(out[0], blocks[1]) and torch.equal(out[1], blocks[2])
    assert tier.stats.corrupt_blocks == 1
    (value,) = tier.fetch([3])
    with pytest.raises(ValueError, match="checksum"):
        codec.decode(value)
    # A damaged checksum is caught the same way.
    raw.setrange(tier.key(1), len(codec.header) + codec.block_bytes(), b"\x00" * 8)
    assert tier.fetch_into([1, 2], codec.header, out) == 0
    assert tier.stats.corrupt_blocks == 2
