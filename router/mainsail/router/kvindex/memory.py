"""The exact global KV index, fed by the KV events workers publish.

Workers report every block they store or remove, per tier, with the shared chained hash
(`mainsail.spec.kvhash`); the router applies them here and asks, per request, how long a prefix
of the prompt each worker holds. Memory is bounded by ``max_blocks`` (the deployment's
``router.kvIndexMaxBlocks``) with least-recently-useful eviction: a block is "useful" when it is
stored or when a lookup reaches it. Eviction only forgets; the worker still has the block and a
later event or resync re-adds it.

Not thread-safe: the router calls it from its event loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mainsail.router.kvindex._slots import WorkerSlots, bit_positions
from mainsail.router.kvindex._table import BlockTable
from mainsail.router.kvindex.protocol import (
    LOCAL_TIERS,
    TIERS,
    IndexStats,
    check_kind,
    tier_indexes,
)


def _tier(tier: str) -> int:
    if tier not in TIERS:
        raise ValueError(f"unknown KV tier {tier!r}; known: {list(TIERS)}")
    return TIERS.index(tier)


class GlobalKVIndex:
    """Block hash -> (worker, tier) holders, in process memory, capped at ``max_blocks``."""

    def __init__(self, max_blocks: int = 1_000_000) -> None:
        self._table = BlockTable(max_blocks, touch_on_lookup=True)
        self._slots = WorkerSlots()
        self._tier_cache: dict[tuple[str, ...], tuple[int, ...]] = {}

    @property
    def mode(self) -> str:
        """Always ``"exact"``: contents come from the workers' own events."""
        return "exact"

    def apply_event(
        self, worker_id: str, kind: str, hashes: Iterable[int], tier: str = "device"
    ) -> None:
        """Applies a ``"stored"`` or ``"removed"`` event of one worker in one tier."""
        check_kind(kind)
        t = _tier(tier)
        if kind == "stored":
            self._table.add(self._slots.assign(worker_id), t, hashes)
            return
        slot = self._slots.get(worker_id)
        if slot is not None:
            self._table.discard(slot, t, hashes)

    def replace_worker(self, worker_id: str, hashes: Iterable[int], tier: str = "device") -> None:
        """Replaces the worker's blocks in ``tier`` with a full snapshot (on reconnect)."""
        t = _tier(tier)
        slot = self._slots.assign(worker_id)
        self._table.drop(slot, t)
        self._table.add(slot, t, hashes)

    def remove_worker(self, worker_id: str) -> None:
        """Forgets the worker in every tier and frees its slot; unknown ids are ignored."""
        slot = self._slots.get(worker_id)
        if slot is None:
            return
        self._table.drop(slot)
        self._slots.release(worker_id)

    def longest_prefix(
        self, block_hashes: Sequence[int], *, tiers: Sequence[str] = LOCAL_TIERS
    ) -> dict[str, int]:
        """Worker id -> leading blocks held in any of ``tiers``; O(len(block_hashes))."""
        key = tuple(tiers)
        idx = self._tier_cache.get(key)
        if idx is None:
            idx = self._tier_cache[key] = tier_indexes(tiers)
        if not block_hashes:
            return {}
        return self._slots.name_depths(*self._table.walk_lists(block_hashes, idx))

    def holders(self, block_hash: int) -> frozenset[tuple[str, str]]:
        """(worker id, tier) pairs holding one block; for debugging and tests, no touch."""
        worker = self._slots.worker
        return frozenset(
            (worker(slot), TIERS[t])
            for t, mask in enumerate(self._table.masks(block_hash))
            for slot in bit_positions(mask)
        )

    def workers(self) -> frozenset[str]:
        """Workers the index knows (registered by an event or snapshot, not yet removed)."""
        return self._slots.ids()

    def stats(self) -> IndexStats:
        """Current size and counters."""
        table = self._table
        return IndexStats(
            mode=self.mode,
            entries=len(table),
            max_entries=table.max_blocks,
            holders=table.holders,
            workers=len(self._slots),
            evictions=table.evictions,
            approx_bytes=table.approx_bytes(self._slots.width),
        )
