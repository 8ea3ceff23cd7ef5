"""The approximate KV index: learned from the router's own decisions, for workers without events.

When a worker publishes no KV events, the router still knows one thing: it sent a request with
these block hashes to that worker, so the worker very likely computed (and for a while caches)
those blocks. `record_dispatch` notes exactly that. The guess decays: an entry expires
``ttl_seconds`` after the last dispatch that included it, and the table is capped at
``max_blocks`` entries (oldest dispatch first). Lookups do not refresh entries, since a lookup
is no evidence that the worker still holds the block.

Approximation, stated: holders of one entry expire together (an entry refreshed by a dispatch
to worker B also keeps worker A's older claim alive), and a worker's own evictions are unknown.
`mode` is ``"approximate"`` so metrics and logs never mistake it for the exact index.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from mainsail.router.kvindex._slots import WorkerSlots
from mainsail.router.kvindex._table import BlockTable
from mainsail.router.kvindex.protocol import (
    LOCAL_TIERS,
    TIERS,
    IndexStats,
    check_kind,
    tier_indexes,
)

_DEVICE = TIERS.index("device")


class ApproximateIndex:
    """Prefix guesses per worker from the router's dispatches, with a TTL and a size cap."""

    def __init__(
        self,
        max_blocks: int = 100_000,
        ttl_seconds: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be > 0, got {ttl_seconds}")
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._stamp: dict[int, float] = {}
        self._table = BlockTable(max_blocks, touch_on_lookup=False, on_delete=self._forget)
        self._slots = WorkerSlots()

    @property
    def mode(self) -> str:
        """Always ``"approximate"``: contents are the router's guesses."""
        return "approximate"

    def record_dispatch(self, worker_id: str, block_hashes: Iterable[int]) -> None:
        """Notes that ``worker_id`` now holds the blocks of a request just sent to it."""
        self.apply_event(worker_id, "stored", block_hashes)

    def apply_event(
        self, worker_id: str, kind: str, hashes: Iterable[int], tier: str = "device"
    ) -> None:
        """Accepts events too (a worker's removals sharpen the guesses); one tier is kept."""
        check_kind(kind)
        del tier  # guesses are not per tier: a dispatch says nothing about where blocks live
        now = self._clock()
        self._expire(now)
        if kind == "removed":
            slot = self._slots.get(worker_id)
            if slot is not None:
                self._table.discard(slot, _DEVICE, hashes)
            return
        hashes = list(hashes)
        table = self._table
        evictions = table.evictions
        self._stamp.update(dict.fromkeys(hashes, now))  # one C call, not a loop per block
        table.add(self._slots.assign(worker_id), _DEVICE, hashes)
        if table.evictions != evictions:  # the add may have evicted (and un-stamped) its own
            for h in hashes:
                if h in table:
                    self._stamp[h] = now

    def replace_worker(self, worker_id: str, hashes: Iterable[int], tier: str = "device") -> None:
        """Replaces the guesses for ``worker_id`` with a known set of blocks."""
        slot = self._slots.assign(worker_id)
        self._table.drop(slot)
        self.apply_event(worker_id, "stored", hashes, tier)

    def remove_worker(self, worker_id: str) -> None:
        """Forgets a worker that disappeared."""
        slot = self._slots.get(worker_id)
        if slot is None:
            return
        self._table.drop(slot)
        self._slots.release(worker_id)

    def longest_prefix(
        self, block_hashes: Sequence[int], *, tiers: Sequence[str] = LOCAL_TIERS
    ) -> dict[str, int]:
        """Worker id -> leading blocks it probably holds (``tiers`` is checked, then ignored)."""
        tier_indexes(tiers)
        self._expire(self._clock())
        if not block_hashes:
            return {}
        worker = self._slots.worker
        walked = self._table.walk(block_hashes, (_DEVICE,))
        return {worker(slot): depth for slot, depth in walked.items()}

    def stats(self) -> IndexStats:
        """Current size and counters (evictions include TTL expiries)."""
        table = self._table
        return IndexStats(
            mode=self.mode,
            entries=len(table),
            max_entries=table.max_blocks,
            holders=table.holders,
            workers=len(self._slots),
            evictions=table.evictions,
            approx_bytes=table.approx_bytes(self._slots.width) + 100 * len(self._stamp),
        )

    def _expire(self, now: float) -> None:
        """Drops entries whose last dispatch is older than the TTL (table order = stamp order)."""
        deadline = now - self.ttl_seconds
        table = self._table
        while True:
            oldest = table.oldest()
            if oldest is None or self._stamp[oldest] > deadline:
                return
            table.evict_oldest()

    def _forget(self, block_hash: int) -> None:
        self._stamp.pop(block_hash, None)
