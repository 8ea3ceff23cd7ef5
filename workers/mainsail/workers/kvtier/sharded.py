"""The KV tier over several Redis servers: blocks spread by consistent hashing.

Why: a cache pool with N replicas is N independent Redis servers (one StatefulSet pod each,
`MAINSAIL_CACHE_URLS` lists them all). Using only the first would leave N-1 idle and cap the
tier at one server's memory. Each block goes to one server, chosen by a hash ring keyed by the
server URLs (160 points each): every worker, whatever order it got the URLs in, puts a block on
the same server, and adding or losing one server moves only about 1/N of the keys.

A lost server is a cache miss, never an error: each server has its own circuit breaker (see
`RedisKVTier`), so its blocks read as absent and its writes are dropped while the others keep
serving; a prompt's leading hits then stop at its first block on the lost server. Counters are
one `TierStats` shared by every server's tier.

Writes go per server through `store`/`store_rows` (`open_writes` returns None, so the writer
stores batch by batch); reads ask each server for its share of the blocks and merge them back
into the prompt's order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from mainsail.workers.kvtier.circuit import TierStats
from mainsail.workers.kvtier.redis_tier import RedisKVTier
from mainsail.workers.kvtier.resp import Value
from mainsail.workers.kvtier.write_session import WriteSession, _slicer

POINTS_PER_SHARD = 160
_MASK = (1 << 64) - 1


class HashRing:
    """Consistent hashing of 64-bit block hashes onto named shards (pure)."""

    def __init__(self, names: Sequence[str], points_per_shard: int = POINTS_PER_SHARD) -> None:
        if not names:
            raise ValueError("HashRing needs at least one shard")
        if len(set(names)) != len(names):
            raise ValueError(f"HashRing: duplicate shard names in {list(names)}")
        points: list[int] = []
        owners: list[int] = []
        for index, name in enumerate(names):
            for v in range(points_per_shard):
                digest = hashlib.blake2b(f"{name}#{v}".encode(), digest_size=8).digest()
                points.append(int.from_bytes(digest, "big"))
                owners.append(index)
        order = np.argsort(np.array(points, dtype=np.uint64), kind="stable")
        self._points = np.array(points, dtype=np.uint64)[order]
        self._owners = np.array(owners, dtype=np.int64)[order]
        self.size = len(names)

    def shard_of(self, block_hashes: Sequence[int]) -> np.ndarray:
        """The shard index of each block hash (the first ring point at or after it)."""
        if self.size == 1:
            return np.zeros(len(block_hashes), dtype=np.int64)
        keys = _mix(np.array([h & _MASK for h in block_hashes], dtype=np.uint64))
        at = np.searchsorted(self._points, keys, side="left") % len(self._points)
        owners: np.ndarray = self._owners[at]
        return owners


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads hashes that share high bits (wrapping uint64 math)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        mixed: np.ndarray = x ^ (x >> np.uint64(31))
        return mixed


class ShardedKVTier:
    """The `RedisKVTier` interface over several servers (see the module docstring)."""

    def __init__(self, shards: Sequence[RedisKVTier], names: Sequence[str]) -> None:
        if len(shards) != len(names) or not shards:
            raise ValueError("ShardedKVTier: one name per shard, at least one shard")
        self.shards = list(shards)
        self.ring = HashRing(names)
        self.stats: TierStats = shards[0].stats
        if any(s.stats is not self.stats for s in shards):
            raise ValueError("ShardedKVTier: the shards must share one TierStats")

    def _split(self, block_hashes: Sequence[int]) -> dict[int, list[int]]:
        """Shard index -> positions (in order) of the blocks it holds."""
        groups: dict[int, list[int]] = {}
        for position, shard in enumerate(self.ring.shard_of(block_hashes).tolist()):
            groups.setdefault(int(shard), []).append(position)
        return groups

    def identity(self) -> str:
        """Equal for every worker sharing these servers and key namespace (whatever order
        it got the URLs in): the servers' own identities, sorted and hashed."""
        joined = "|".join(sorted(s.identity() for s in self.shards))
        return hashlib.blake2b(joined.encode(), digest_size=8).hexdigest()

    def available(self) -> bool:
        """True while any server's circuit is closed (the others' blocks are misses)."""
        return any(s.available() for s in self.shards)

    def open_writes(self) -> WriteSession | None:
        """No session across servers: the writer stores each batch with `store[_rows]`."""
        return None

    def store(self, blocks: Mapping[int, Value]) -> int:
        hashes = list(blocks)
        return sum(
            self.shards[s].store({hashes[i]: blocks[hashes[i]] for i in positions})
            for s, positions in self._split(hashes).items()
        )

    def store_rows(
        self,
        block_hashes: Sequence[int],
        header: bytes,
        rows: np.ndarray | Callable[[int, int], np.ndarray],
    ) -> int:
        n = len(block_hashes)
        if not n:
            return 0
        data = (rows if callable(rows) else _slicer(rows))(0, n)
        stored = 0
        for s, positions in self._split(block_hashes).items():
            hashes = [block_hashes[i] for i in positions]
            stored += self.shards[s].store_rows(hashes, header, data[np.array(positions)])
        return stored

    def leading_hits(self, block_hashes: Sequence[int]) -> int:
        """How many of ``block_hashes``, from the first, the servers hold."""
        if not block_hashes or not self.available():
            return 0
        present = [False] * len(block_hashes)
        for s, positions in self._split(block_hashes).items():
            flags = self.shards[s].present([block_hashes[i] for i in positions])
            for position, flag in zip(positions, flags, strict=True):
                present[position] = flag
        return self.stats.record_lookup(present)

    def fetch(self, block_hashes: Sequence[int]) -> list[bytes]:
        """Values of the leading ``block_hashes`` the servers still hold."""
        if not block_hashes or not self.available():
            return []
        got: dict[int, bytes] = {}
        for s, positions in self._split(block_hashes).items():
            values = self.shards[s].fetch([block_hashes[i] for i in positions])
            got.update(zip(positions, values, strict=False))
        out: list[bytes] = []
        while len(out) in got:
            out.append(got[len(out)])
        return out

    def fetch_into(
        self, block_hashes: Sequence[int], header: bytes, out: torch.Tensor
    ) -> int | None:
        """Receive the leading blocks into ``out[i]``; how many arrived intact."""
        if not block_hashes or not self.available():
            return 0
        arrived: dict[int, tuple[torch.Tensor, int]] = {}
        for s, positions in self._split(block_hashes).items():
            staging = torch.empty((len(positions), *out.shape[1:]), dtype=out.dtype)
            got = self.shards[s].fetch_into([block_hashes[i] for i in positions], header, staging)
            if got is None:
                return None
            for rank, position in enumerate(positions[:got]):
                arrived[position] = (staging, rank)
        leading = 0
        while leading in arrived:
            staging, rank = arrived[leading]
            out[leading].copy_(staging[rank])
            leading += 1
        return leading


KVTier = RedisKVTier | ShardedKVTier
