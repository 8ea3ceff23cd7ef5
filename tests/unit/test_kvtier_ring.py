"""The KV tier's hash ring (`kvtier/sharded.py`): which cache server holds which block."""

from __future__ import annotations

import pytest

from mainsail.workers.kvtier import HashRing, RedisTierFactory

pytestmark = pytest.mark.unit


def test_the_ring_moves_few_keys_when_a_server_is_added() -> None:
    """Consistent hashing: from three servers to four, about a quarter of the blocks move (all
    to the new one), not most of them as `hash % n` would."""
    names = [f"redis://cache-{i}.svc:6379/0" for i in range(4)]
    hashes = [(i * 0x9E3779B97F4A7C15) % (1 << 64) for i in range(4000)]
    before = HashRing(names[:3]).shard_of(hashes).tolist()
    after = HashRing(names).shard_of(hashes).tolist()
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert all(a == 3 for _, a in moved)
    assert 0.15 < len(moved) / len(hashes) < 0.35
    with pytest.raises(ValueError, match="duplicate"):
        HashRing([names[0], names[0]])
    with pytest.raises(ValueError, match="duplicates"):
        RedisTierFactory(f"{names[0]},{names[0]}")
    with pytest.raises(ValueError, match="redis://"):
        RedisTierFactory(f"{names[0]},http://x")
