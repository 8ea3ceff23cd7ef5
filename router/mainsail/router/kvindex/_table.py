"""The bounded block table both index modes are built on.

Layout: an ``OrderedDict`` from block hash to one holder bitmask per tier (bit ``i`` = worker
slot ``i``, see `_slots`) plus a derived fourth mask, ``device | host``, kept up to date so the
default lookup does one big-int AND per block; entries are ordered from least to most recently
useful. Beside it, per (worker slot, tier), the set of hashes the slot holds, so forgetting a
worker costs its own blocks rather than a scan of the table. Every operation is O(1) per block
(amortised); the lookup walk is O(blocks of the prompt).

Eviction: inserting a new hash when the table holds ``max_blocks`` drops the least recently
useful entry first, so ``len(table) <= max_blocks`` always holds. "Useful" is refreshed on
insert and, when ``touch_on_lookup`` is set, on every lookup that reaches the entry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from mainsail.router.kvindex._slots import bit_positions

# Estimated CPython cost per table entry (OrderedDict slot and link, key int, list of 3 masks)
# and per holder (set slot in the reverse index), calibrated with tracemalloc in
# bench/routing_latency.py; masks add about one byte per 8 worker slots.
_ENTRY_BYTES = 230
_HOLDER_BYTES = 60
_N_TIERS = 3
_LOCAL = 3  # index of the derived device|host mask in an entry
_LOCAL_TIERS = (0, 1)


class BlockTable:
    """Hash -> per-tier holder masks, with a size cap and least-recently-useful eviction.

    ``on_delete(hash)`` is called whenever an entry leaves the table (evicted or emptied).
    """

    def __init__(
        self,
        max_blocks: int,
        touch_on_lookup: bool,
        on_delete: Callable[[int], None] | None = None,
    ) -> None:
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
        self.max_blocks = max_blocks
        self.touch_on_lookup = touch_on_lookup
        self.evictions = 0
        self.holders = 0
        self._on_delete = on_delete
        self._entries: OrderedDict[int, list[int]] = OrderedDict()
        self._held: dict[int, list[set[int]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self._entries

    def oldest(self) -> int | None:
        """The least recently useful hash, or None when empty."""
        return next(iter(self._entries), None)

    def masks(self, block_hash: int) -> tuple[int, ...]:
        """Per-tier holder masks of a hash (all 0 when absent); does not touch."""
        entry = self._entries.get(block_hash)
        return tuple(entry[:_N_TIERS]) if entry is not None else (0,) * _N_TIERS

    def held(self, slot: int, tier: int) -> frozenset[int]:
        """Hashes the slot holds in ``tier``."""
        sets = self._held.get(slot)
        return frozenset(sets[tier]) if sets is not None else frozenset()

    def add(self, slot: int, tier: int, hashes: Iterable[int]) -> None:
        """Marks ``slot`` as holding ``hashes`` in ``tier`` and refreshes them."""
        entries = self._entries
        bit = 1 << slot
        sets = self._held.get(slot)
        if sets is None:
            sets = self._held[slot] = [set() for _ in range(_N_TIERS)]
        mine = sets[tier]
        for h in hashes:
            entry = entries.get(h)
            if entry is None:
                if len(entries) >= self.max_blocks:
                    self.evict_oldest()
                entry = entries[h] = [0] * (_N_TIERS + 1)
            else:
                entries.move_to_end(h)
            if not entry[tier] & bit:
                entry[tier] |= bit
                if tier in _LOCAL_TIERS:
                    entry[_LOCAL] |= bit
                mine.add(h)
                self.holders += 1

    def discard(self, slot: int, tier: int, hashes: Iterable[int]) -> None:
        """Clears ``slot``'s bit for ``hashes`` in ``tier``; empty entries disappear."""
        sets = self._held.get(slot)
        if sets is None:
            return
        mine = sets[tier]
        for h in hashes:
            if h in mine:
                mine.discard(h)
                self._clear(h, slot, tier)

    def drop(self, slot: int, tier: int | None = None) -> None:
        """Forgets everything ``slot`` holds in ``tier`` (every tier when None)."""
        sets = self._held.get(slot)
        if sets is None:
            return
        for t in range(_N_TIERS) if tier is None else (tier,):
            for h in sets[t]:
                self._clear(h, slot, t)
            sets[t] = set()
        if not any(sets):
            del self._held[slot]

    def evict_oldest(self) -> int:
        """Drops the least recently useful entry and returns its hash."""
        h, entry = self._entries.popitem(last=False)
        held = self._held
        for tier in range(_N_TIERS):
            mask = entry[tier]
            if not mask:
                continue
            if mask & (mask - 1):
                for slot in bit_positions(mask):
                    held[slot][tier].discard(h)
                    self.holders -= 1
            else:  # one holder: the common case
                held[mask.bit_length() - 1][tier].discard(h)
                self.holders -= 1
        self.evictions += 1
        if self._on_delete is not None:
            self._on_delete(h)
        return h

    def walk(self, block_hashes: Sequence[int], tiers: tuple[int, ...]) -> dict[int, int]:
        """Slot -> number of leading ``block_hashes`` it holds in any of ``tiers`` (> 0 only).

        One pass over the prompt: ``alive`` is the set of slots that hold every block so far;
        a slot's depth is the position where it leaves ``alive``. Stops when ``alive`` empties.
        Per block: one dict lookup, one LRU touch, one big-int AND and compare.
        """
        if not block_hashes:
            return {}
        get = self._entries.get
        touch = self._entries.move_to_end if self.touch_on_lookup else None
        if tiers == _LOCAL_TIERS:
            t0 = t1 = t2 = _LOCAL
        else:
            t0 = tiers[0]
            t1 = tiers[1] if len(tiers) > 1 else t0
            t2 = tiers[2] if len(tiers) > 2 else t0
        depth_of: dict[int, int] = {}
        alive = -1  # every slot, before the first block
        depth = 0
        for h in block_hashes:
            entry = get(h)
            if entry is None:
                break
            if touch is not None:
                touch(h)
            kept = alive & (entry[t0] | entry[t1] | entry[t2] if t0 != t1 else entry[t0])
            if kept != alive:
                if not kept:
                    break
                if depth:
                    gone = alive ^ kept
                    if gone & (gone - 1):
                        for slot in bit_positions(gone):
                            depth_of[slot] = depth
                    else:  # one worker leaves: the common case
                        depth_of[gone.bit_length() - 1] = depth
                alive = kept
            depth += 1
        if depth and alive:
            for slot in bit_positions(alive):
                depth_of[slot] = depth
        return depth_of

    def approx_bytes(self, width: int) -> int:
        """Estimated memory of the structures, bytes (``width`` = worker slots in use)."""
        return len(self._entries) * (_ENTRY_BYTES + width // 8) + self.holders * _HOLDER_BYTES

    def _clear(self, h: int, slot: int, tier: int) -> None:
        entry = self._entries.get(h)
        if entry is None:
            return
        bit = 1 << slot
        if entry[tier] & bit:
            entry[tier] &= ~bit
            if tier in _LOCAL_TIERS:
                entry[_LOCAL] = entry[0] | entry[1]
            self.holders -= 1
            if not any(entry):
                del self._entries[h]
                if self._on_delete is not None:
                    self._on_delete(h)
