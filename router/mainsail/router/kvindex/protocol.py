"""The KV index seam: what the router asks of any global prefix index.

Why a protocol: the in-memory index (`GlobalKVIndex`) serves one router replica; several
replicas share cache knowledge either by each consuming every worker's event stream (events are
small and idempotent per (worker, block, tier), so replicas converge without talking to each
other), or, later, through a shared store behind this same interface (a Redis-backed index is
future work; see docs/scheduling.md). Callers depend only on `KVIndex`.

Vocabulary: a *block hash* is a chained id from `mainsail.spec.kvhash.chain_hashes`; a *tier* is
where a worker holds the block: ``device`` (accelerator memory), ``host`` (CPU memory) or
``redis`` (the shared cache pool, written by that worker).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

TIERS: tuple[str, ...] = ("device", "host", "redis")
"""Tier names, in the order the in-memory layout stores them."""

LOCAL_TIERS: tuple[str, ...] = ("device", "host")
"""Tiers that count as a worker-local prefix hit by default (Redis is reachable by all)."""

EVENT_KINDS = frozenset({"stored", "removed"})


@dataclass(frozen=True, slots=True)
class IndexStats:
    """Size and churn of an index, for metrics (`mode` labels exact vs approximate)."""

    mode: str  # "exact" (fed by worker events) | "approximate" (learned from own decisions)
    entries: int  # block hashes held
    max_entries: int  # the configured cap
    holders: int  # (block, worker, tier) triples
    workers: int  # workers known to the index
    evictions: int  # entries dropped by the cap (or TTL, approximate mode) since start
    approx_bytes: int  # estimated memory of the index structures, bytes


class KVIndex(Protocol):
    """A global map from block hash to the workers (and tiers) holding it."""

    @property
    def mode(self) -> str:
        """``"exact"`` or ``"approximate"``; exported as a metrics label."""
        ...

    def apply_event(
        self, worker_id: str, kind: str, hashes: Iterable[int], tier: str = "device"
    ) -> None:
        """Applies one KV event: ``kind`` is ``"stored"`` or ``"removed"``."""
        ...

    def replace_worker(self, worker_id: str, hashes: Iterable[int], tier: str = "device") -> None:
        """Replaces everything known about ``worker_id`` in ``tier`` (resync on reconnect)."""
        ...

    def remove_worker(self, worker_id: str) -> None:
        """Forgets a worker that disappeared, in every tier."""
        ...

    def longest_prefix(
        self, block_hashes: Sequence[int], *, tiers: Sequence[str] = LOCAL_TIERS
    ) -> dict[str, int]:
        """Worker id -> number of leading ``block_hashes`` it holds (workers with 0 omitted)."""
        ...

    def stats(self) -> IndexStats:
        """Current size and counters."""
        ...


def tier_indexes(tiers: Sequence[str]) -> tuple[int, ...]:
    """Positions of ``tiers`` in `TIERS`; raises ValueError on an unknown or empty list."""
    if not tiers:
        raise ValueError("tiers must not be empty")
    unknown = [t for t in tiers if t not in TIERS]
    if unknown:
        raise ValueError(f"unknown KV tier(s) {unknown}; known: {list(TIERS)}")
    return tuple(sorted({TIERS.index(t) for t in tiers}))


def check_kind(kind: str) -> None:
    """Raises ValueError unless ``kind`` is a known event kind."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown KV event kind {kind!r}; known: {sorted(EVENT_KINDS)}")
