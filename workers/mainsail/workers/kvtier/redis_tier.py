"""The shared KV tier: full KV blocks in Redis, keyed by their chained hash.

Keys are `mainsail:kv:<fingerprint>:<hash as 16 hex digits>` — one key per block (no hash
tags), so blocks spread over every slot of a Redis Cluster; values come from `BlockCodec`
(header + data in one SET, hence atomic). Existence checks and fetches are pipelined: one
round trip per batch, not per block (`run_pipeline`, without redis-py's per-command
overhead; for small blocks `RespBatch` packs and checks a whole batch with numpy). Writes
go through a `WriteSession`, which keeps one connection and lets the writer send the next
batch before reading the previous one's replies (Redis and the client work at once).
Eviction is Redis's own (`maxmemory-policy allkeys-lru`) or a TTL.

Redis is an optimisation, never a dependency of correctness: every error (down, slow, full)
opens a circuit for `backoff_s`, during which the tier answers "miss" and drops writes at no
cost, so the engine recomputes and no request fails; the next call after the backoff probes
Redis again, so the tier recovers by itself when Redis returns.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np
import redis
import torch
from redis.backoff import NoBackoff
from redis.retry import Retry

from mainsail.spec.worker_auth import REDIS_PASSWORD_ENV
from mainsail.workers.kvtier.bulk_get import get_into
from mainsail.workers.kvtier.checksum import CHECKSUM_BYTES
from mainsail.workers.kvtier.circuit import CircuitBreaker, TierStats
from mainsail.workers.kvtier.pipeline import ReplyPipe, exchange, run_pipeline
from mainsail.workers.kvtier.resp import RespBatch, SetCommands, Value, read_exists
from mainsail.workers.kvtier.write_session import WriteSession, _size, _slicer

if TYPE_CHECKING:
    from mainsail.workers.kvtier.sharded import KVTier

__all__ = ["RedisKVTier", "RedisTierFactory", "TierStats"]


class RedisKVTier:
    """Store, probe and fetch KV blocks in Redis, degrading to a no-op while Redis is down."""

    def __init__(
        self,
        client: redis.Redis,
        fingerprint: str,
        *,
        ttl_s: int = 0,
        key_prefix: str = "mainsail:kv",
        backoff_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        stats: TierStats | None = None,
    ) -> None:
        if ttl_s < 0 or backoff_s < 0:
            raise ValueError("ttl_s and backoff_s must be >= 0")
        self.client = client
        self.prefix = f"{key_prefix}:{fingerprint}"
        self.ttl_s = ttl_s
        self.backoff_s = backoff_s
        self.sets = SetCommands(self.prefix.encode(), ttl_s)
        self._exists = RespBatch(b"EXISTS", len(self.sets.prefix) + 17)
        # The writer and the loader threads share one tier: both objects lock themselves.
        self.stats = stats if stats is not None else TierStats()
        self.breaker = CircuitBreaker(backoff_s, clock, self.stats)

    @classmethod
    def from_url(
        cls,
        url: str,
        fingerprint: str,
        *,
        timeout_s: float = 0.5,
        ttl_s: int = 0,
        backoff_s: float = 2.0,
        stats: TierStats | None = None,
    ) -> RedisKVTier:
        """A tier on a new client for ``url``, short socket timeouts: a slow Redis is a miss.

        One immediate retry on a connection error (a pooled connection to a restarted server
        is stale), none on a timeout: redis-py's default of 10 backed-off retries would turn
        a down Redis into seconds of waiting per call. Reads of 1 MiB per system call (not
        64 KiB): blocks of large models are megabytes, and smaller reads halve fetch speed.
        """
        client = redis.Redis.from_url(
            url,
            # The cache pool's password (operator-issued) when the URL carries none.
            password=None if urlsplit(url).password else os.environ.get(REDIS_PASSWORD_ENV) or None,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            socket_read_size=1 << 20,
        )
        return cls(client, fingerprint, ttl_s=ttl_s, backoff_s=backoff_s, stats=stats)

    def key(self, block_hash: int) -> str:
        return f"{self.prefix}:{block_hash:016x}"

    def identity(self) -> str:
        """An opaque id equal for every worker sharing this store and key namespace.

        The router groups workers by it: a block one of them wrote is fetchable by all. Made
        of the server's location and the key prefix, hashed, so no address or credential leaks
        into load reports.
        """
        kw = self.client.connection_pool.connection_kwargs
        where = f"{kw.get('host', '')}:{kw.get('port', '')}/{kw.get('db', 0)}|{kw.get('path', '')}"
        return hashlib.blake2b(f"{where}|{self.prefix}".encode(), digest_size=8).hexdigest()

    def available(self) -> bool:
        """False while the circuit is open after an error."""
        return self.breaker.available()

    def store(self, blocks: Mapping[int, Value]) -> int:
        """Write ``blocks`` (hash -> encoded value, or its parts); returns how many were written.

        Each block is one SET (atomic); all go in one pipelined round trip.
        """
        if not blocks:
            return 0
        if not self.available():
            self.breaker.skip(len(blocks))
            return 0
        if getattr(self.client, "connection_pool", None) is None:
            try:
                run_pipeline(self.client, self.sets.commands(blocks), expect=_OK)
            except redis.RedisError as exc:
                self.breaker.trip(exc)
                return 0
            nbytes = sum(_size(v) for v in blocks.values())
            self.stats.add(stored_blocks=len(blocks), bytes_written=nbytes)
            return len(blocks)
        return self._store_once(lambda writes: writes.send(blocks))

    def store_rows(
        self,
        block_hashes: Sequence[int],
        header: bytes,
        rows: np.ndarray | Callable[[int, int], np.ndarray],
    ) -> int:
        """Write blocks given as ``header`` + data row ``i`` (uint8), one row per hash.

        Same contract as `store`, for small blocks: the SETs are packed with numpy
        (`RespBatch`) and the ``+OK`` replies checked in one pass. ``rows`` is an array, or
        ``rows(start, end)`` giving the rows of blocks ``start:end``: it is then called chunk
        by chunk while the previous chunk is already on its way, so Redis stores one chunk
        while the next is being prepared.
        """
        n = len(block_hashes)
        if not n:
            return 0
        get_rows = rows if callable(rows) else _slicer(rows)
        if getattr(self.client, "connection_pool", None) is None:
            data = get_rows(0, n)
            return self.store({h: (header, data[i].data) for i, h in enumerate(block_hashes)})
        if not self.available():
            self.breaker.skip(n)
            return 0
        return self._store_once(lambda writes: writes.send_rows(block_hashes, header, get_rows))

    def open_writes(self) -> WriteSession | None:
        """A pipelined write session on a connection of its own, for a writer with many
        batches; None while the circuit is open, when Redis cannot be reached (the circuit
        then opens), or when the client has no pool of its own (Redis Cluster): use `store`
        and `store_rows` then."""
        pool = getattr(self.client, "connection_pool", None)
        if pool is None or not self.available():
            return None
        try:
            return WriteSession(ReplyPipe(pool), self.sets, self.breaker, self.stats)
        except redis.RedisError as exc:
            self.breaker.trip(exc)
            return None

    def _store_once(self, send: Callable[[WriteSession], bool]) -> int:
        writes = self.open_writes()
        if writes is None:
            return 0
        try:
            return (writes.confirm() or 0) if send(writes) else 0
        finally:
            writes.close()

    def _exists_flags(self, block_hashes: Sequence[int]) -> list[bool]:
        pool = getattr(self.client, "connection_pool", None)
        if pool is None:
            return [
                bool(x)
                for x in run_pipeline(
                    self.client, [(b"EXISTS", self.sets.key(h)) for h in block_hashes]
                )
            ]
        payload = self._exists.pack(self.sets.keys(block_hashes))
        n = len(block_hashes)

        return exchange(pool, [payload.reshape(-1).data], lambda conn: read_exists(conn, n))

    def present(self, block_hashes: Sequence[int]) -> list[bool]:
        """Which of ``block_hashes`` Redis holds (one round trip); all absent while the
        circuit is open or when Redis fails (which opens it). Not counted as a lookup."""
        if not block_hashes or not self.available():
            return [False] * len(block_hashes)
        try:
            return self._exists_flags(block_hashes)
        except redis.RedisError as exc:
            self.breaker.trip(exc)
            return [False] * len(block_hashes)

    def leading_hits(self, block_hashes: Sequence[int]) -> int:
        """How many of ``block_hashes``, from the first, Redis holds (one round trip)."""
        if not block_hashes or not self.available():
            return 0
        try:
            found = self._exists_flags(block_hashes)
        except redis.RedisError as exc:
            self.breaker.trip(exc)
            return 0
        return self.stats.record_lookup(found)

    def fetch(self, block_hashes: Sequence[int]) -> list[bytes]:
        """Values of the leading ``block_hashes`` Redis still holds (stops at the first miss)."""
        if not block_hashes or not self.available():
            return []
        try:
            # Pipelined GETs rather than MGET: MGET fails across Redis Cluster slots.
            values = run_pipeline(self.client, [(b"GET", self.sets.key(h)) for h in block_hashes])
        except redis.RedisError as exc:
            self.breaker.trip(exc)
            return []
        out: list[bytes] = []
        for value in values:
            if value is None:
                break
            out.append(bytes(value))
        self.stats.add(fetched_blocks=len(out), bytes_read=sum(len(v) for v in out))
        return out

    def fetch_into(
        self, block_hashes: Sequence[int], header: bytes, out: torch.Tensor
    ) -> int | None:
        """Receive the leading ``block_hashes``' values (``header`` + data) into ``out[i]``.

        Returns how many leading blocks arrived intact (0 while Redis is down), or None when
        this client cannot receive in place (use `fetch`).
        """
        if not block_hashes or not self.available():
            return 0
        corrupt = [0]
        try:
            keys = self.sets.keys(block_hashes)
            got = get_into(self.client, keys, header, out, corrupt)
        except redis.RedisError as exc:
            self.breaker.trip(exc)
            return 0
        if got is None:
            return None
        row = len(header) + out[0].numel() * out.element_size() + CHECKSUM_BYTES
        self.stats.add(fetched_blocks=got, bytes_read=got * row, corrupt_blocks=corrupt[0])
        if corrupt[0]:
            log.warning(
                "KV tier: %d corrupt block(s) (checksum mismatch) read as a miss", corrupt[0]
            )
        return got


log = logging.getLogger(__name__)
_OK = b"+OK\r\n"


@dataclass(frozen=True)
class RedisTierFactory:
    """Builds the tier for a namespace once the engine knows it (picklable for Ray).

    ``url``: ``redis://``, ``rediss://`` or ``unix://``; several, comma-separated (the cache
    pool's replicas, `MAINSAIL_CACHE_URLS`), give a `ShardedKVTier` spreading blocks over
    all of them by consistent hashing; ``ttl_s``: 0 leaves eviction to Redis's LRU;
    ``timeout_s``: socket timeout, so a slow Redis is a miss; ``backoff_s``: how long the
    tier stays closed after an error before probing Redis again.
    """

    url: str
    ttl_s: int = 0
    timeout_s: float = 0.5
    backoff_s: float = 2.0

    @property
    def urls(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]

    def __post_init__(self) -> None:
        urls = self.urls
        if not urls:
            raise ValueError("KV tier URL: none given")
        for url in urls:
            if not url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError(f"KV tier URL must be redis://, rediss:// or unix://: {url!r}")
        if len(set(urls)) != len(urls):
            raise ValueError(f"KV tier URLs: duplicates in {self.url!r}")
        if self.ttl_s < 0 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError("RedisTierFactory: ttl_s, timeout_s and backoff_s must be >= 0")

    def __call__(self, namespace: str) -> KVTier:
        from mainsail.workers.kvtier.sharded import ShardedKVTier

        stats = TierStats()
        tiers = [
            RedisKVTier.from_url(
                url,
                namespace,
                timeout_s=self.timeout_s,
                ttl_s=self.ttl_s,
                backoff_s=self.backoff_s,
                stats=stats,
            )
            for url in self.urls
        ]
        return tiers[0] if len(tiers) == 1 else ShardedKVTier(tiers, self.urls)
