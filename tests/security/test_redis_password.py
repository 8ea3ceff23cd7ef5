"""The cache pool's Redis requires a password (the operator issues it); workers use it.

Against a real server started with `--requirepass`: a client without the password stores
and fetches nothing (the tier reads as a miss, never an error to a request), and a worker
with `MAINSAIL_REDIS_PASSWORD` in its environment gets every path of the tier — pipelined
SETs of encoded blocks and of raw rows, probes, GETs, and the zero-copy bulk read into
tensors — through the authenticated connection.
"""

from __future__ import annotations

import pytest
import torch

from mainsail.cli.local.redis_server import RedisServer
from mainsail.spec.worker_auth import REDIS_PASSWORD_ENV
from mainsail.workers.kvtier import BlockCodec, RedisKVTier

pytestmark = pytest.mark.security
PASSWORD = "cache-secret-1"


def _codec(kv_heads: int) -> BlockCodec:
    return BlockCodec(
        layers=2, block_size=16, kv_heads=kv_heads, head_dim=16, dtype=torch.float32,
        fingerprint="fp",
    )  # fmt: skip


@pytest.mark.parametrize("kv_heads", [2, 16])  # 8 KiB blocks (batched paths), 64 KiB (zero-copy)
def test_the_tier_authenticates_with_the_password_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, kv_heads: int
) -> None:
    codec = _codec(kv_heads)
    blocks = {h: torch.randn(codec.shape) for h in (1, 2, 3)}
    with RedisServer(maxmemory="64mb", password=PASSWORD) as server:
        monkeypatch.delenv(REDIS_PASSWORD_ENV, raising=False)
        stranger = RedisKVTier.from_url(server.url, "fp")
        assert stranger.store({h: codec.encode(b) for h, b in blocks.items()}) == 0
        assert stranger.leading_hits([1, 2, 3]) == 0

        monkeypatch.setenv(REDIS_PASSWORD_ENV, PASSWORD)
        tier = RedisKVTier.from_url(server.url, "fp")
        assert tier.store({h: codec.encode(b) for h, b in blocks.items()}) == 3
        rows = torch.stack([torch.randn(codec.shape) for _ in range(2)])
        assert tier.store_rows([4, 5], codec.header, codec.rows(list(rows))) == 2
        assert tier.leading_hits([1, 2, 3, 4, 5, 6]) == 5
        values = tier.fetch([1, 2, 3])
        assert [
            torch.equal(codec.decode(v), blocks[h]) for h, v in zip((1, 2, 3), values, strict=True)
        ] == [True] * 3
        out = torch.empty((5, *codec.shape), dtype=torch.float32)
        got = tier.fetch_into([1, 2, 3, 4, 5], codec.header, out)
        assert got == 5
        assert torch.equal(out[0], blocks[1]) and torch.equal(out[4], rows[1])
