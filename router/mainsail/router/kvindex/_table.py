"""The bounded block table both index modes are built on.

Layout (struct of arrays, so the per-request lookup is a handful of numpy calls, not a
per-block interpreter loop):

- ``_row``: a dict from block hash to a row number; ``_hash`` maps a row back to its hash.
- ``_mask``: per tier, a ``uint64`` array of shape ``(rows, words)``; bit ``i`` of row ``r``
  (word ``i >> 6``, bit ``i & 63``) says worker slot ``i`` (see `_slots`) holds the block in
  that tier. A tier nobody has used yet has no array (many deployments never fill ``host`` or
  ``redis``). Rows grow geometrically (x1.5) up to ``max_blocks``, words as new slots appear;
  freed rows are zeroed and reused through a free list. At 1024 workers a row costs 128 bytes
  per tier in use, against ~60 bytes per (block, worker) holder in the old per-slot sets.
- ``_recency``: an ``int64`` recency stamp per row (see `_recency`).

Why: the old layout (an ``OrderedDict`` of Python big-int masks, walked one block at a time
with ``move_to_end``) cost 200-600 ns per block depending on the machine, up to 5 ms of a
routing decision for a 128k-token prompt at 1024 workers. Here the walk maps the prompt's
hashes to rows in a C-level pass, gathers their masks, and lets ``bitwise_and.accumulate``
compute "slots still matching" at every depth at once (see `_walk`).

The mask matrix is also the reverse index: what a slot holds is one strided column scan, so
forgetting a worker is a vectorised pass over the table rather than a per-holder set kept in
sync with every insert and eviction (those sets were most of the old memory).

Eviction: inserting new hashes when the table holds ``max_blocks`` drops the least recently
useful entries first (exactly, see `_recency`), so ``len(table) <= max_blocks`` always holds.
"Useful" is refreshed on insert and, when ``touch_on_lookup`` is set, on every lookup that
reaches the entry, in the order the old ``move_to_end`` calls gave. One ``add`` is one moment:
its own hashes are refreshed before room is made for its new ones, so an add never evicts a
block it names (if it names more distinct blocks than the cap, only its last ``max_blocks`` are
kept).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from operator import itemgetter

import numpy as np
import numpy.typing as npt

from mainsail.router.kvindex._recency import Recency
from mainsail.router.kvindex._walk import Departures, bit_counts, walk_short

Rows = npt.NDArray[np.intp]
Words = npt.NDArray[np.uint64]

_N_TIERS = 3
_MIN_ROWS = 256
_GROWTH = 3  # halves: rows grow x1.5
_VICTIM_FRACTION = 64  # victims per recompute: max_blocks / this
_FIRST_CHUNK = 64  # blocks walked before the rest of the prompt, for an early exit
_SHORT_WORDS = 2  # mask words up to which a short prompt is walked on Python ints (measured)
_LOOKUP_PIECE = 1024  # hashes per C-level dict lookup pass (a miss repeats at most one)

# Estimated CPython cost per entry besides the numpy arrays (which `approx_bytes` measures
# exactly): the dict slot at its usual load, the hash key and row number objects. Calibrated
# with tracemalloc on bench/routing_latency.py's indexes (94-104 B at 16 to 1024 workers).
_ENTRY_BYTES = 100


def _popcount(words: Words) -> int:
    """Set bits in ``words``."""
    return int(bit_counts(words).sum())


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
        self._row: dict[int, int] = {}
        self._hash: list[int | None] = []
        self._free: list[int] = []
        rows = min(max_blocks, _MIN_ROWS)
        self._mask: list[Words | None] = [None] * _N_TIERS
        self._words = 0
        self._recency = Recency(rows, per_pick=max_blocks // _VICTIM_FRACTION)

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self._row

    def oldest(self) -> int | None:
        """The least recently useful hash, or None when empty."""
        row = self._recency.oldest(len(self._hash))
        return None if row is None else self._hash[row]

    def masks(self, block_hash: int) -> tuple[int, ...]:
        """Per-tier holder masks of a hash (all 0 when absent); does not touch."""
        row = self._row.get(block_hash)
        if row is None:
            return (0,) * _N_TIERS
        return tuple(
            0 if plane is None else int.from_bytes(plane[row].tobytes(), "little")
            for plane in self._mask
        )

    def held(self, slot: int, tier: int) -> frozenset[int]:
        """Hashes the slot holds in ``tier``."""
        hashes = self._hash
        return frozenset(hashes[r] for r in self._column(slot, tier).tolist())  # type: ignore[misc]

    def add(self, slot: int, tier: int, hashes: Iterable[int]) -> None:
        """Marks ``slot`` as holding ``hashes`` in ``tier`` and refreshes them."""
        uniq = list(dict.fromkeys(reversed(hashes if isinstance(hashes, list) else [*hashes])))
        if not uniq:
            return
        uniq.reverse()  # distinct hashes by last occurrence, as sequential touches order them
        if len(uniq) > self.max_blocks:
            uniq = uniq[-self.max_blocks :]
        n = len(uniq)
        rows = np.fromiter(map(self._row.get, uniq, repeat(-1)), dtype=np.intp, count=n)
        stamps = self._recency.next_stamps(n)
        new = rows < 0
        fresh = np.flatnonzero(new)
        if fresh.size < n:  # refresh the known ones first: they are no eviction candidates
            old = ~new
            self._recency.stamp[rows[old]] = stamps[old]
        if fresh.size:
            overflow = len(self._row) + fresh.size - self.max_blocks
            if overflow > 0:
                self._evict(overflow)
            rows[fresh] = self._allocate([uniq[i] for i in fresh.tolist()])
            self._recency.stamp[rows[fresh]] = stamps[fresh]
        word, bit = self._ensure_slot(slot)
        column = self._plane(tier)[:, word]
        held = column[rows]
        self.holders += n - int(np.count_nonzero(held & bit))
        column[rows] = held | bit

    def discard(self, slot: int, tier: int, hashes: Iterable[int]) -> None:
        """Clears ``slot``'s bit for ``hashes`` in ``tier``; empty entries disappear."""
        word, bit = divmod(slot, 64)
        plane = self._mask[tier]
        if word >= self._words or plane is None:
            return
        get = self._row.get
        found = [r for r in dict.fromkeys(map(get, hashes)) if r is not None]
        if not found:
            return
        rows = np.array(found, dtype=np.intp)
        column = plane[:, word]
        held = column[rows]
        mine = (held >> np.uint64(bit)) & np.uint64(1) != 0
        rows = rows[mine]
        if rows.size:
            column[rows] = held[mine] & ~np.uint64(1 << bit)
            self.holders -= int(rows.size)
            self._delete_empty(rows)

    def drop(self, slot: int, tier: int | None = None) -> None:
        """Forgets everything ``slot`` holds in ``tier`` (every tier when None)."""
        word, bit = divmod(slot, 64)
        if word >= self._words:
            return
        cleared = []
        for t in range(_N_TIERS) if tier is None else (tier,):
            rows = self._column(slot, t)
            if rows.size:
                self._mask[t][rows, word] &= ~np.uint64(1 << bit)  # type: ignore[index]
                self.holders -= int(rows.size)
                cleared.append(rows)
        if cleared:
            self._delete_empty(np.unique(np.concatenate(cleared)))

    def evict_oldest(self) -> int:
        """Drops the least recently useful entry and returns its hash."""
        row = self._recency.take_oldest(len(self._hash))
        if row is None:
            raise KeyError("evict_oldest from an empty table")
        h = self._hash[row]
        self._evict_rows(np.array([row], dtype=np.intp))
        return h  # type: ignore[return-value]

    def walk(self, block_hashes: Sequence[int], tiers: tuple[int, ...]) -> dict[int, int]:
        """Slot -> number of leading ``block_hashes`` it holds in any of ``tiers`` (> 0 only)."""
        slots, depths = self.walk_lists(block_hashes, tiers)
        return dict(zip(slots, depths, strict=True))

    def walk_lists(
        self, block_hashes: Sequence[int], tiers: tuple[int, ...]
    ) -> tuple[list[int], list[int]]:
        """`walk` as parallel lists (slots, depths), for callers that re-key the result.

        ``alive`` (the slots holding every block so far) at each depth is a running AND of the
        blocks' masks; a slot's depth is where it leaves ``alive``. The first
        ``_FIRST_CHUNK`` blocks go first, so a prompt that nobody holds far stops early; the
        rest go in one piece. Blocks reached (up to the one that empties ``alive``) are touched,
        in prompt order. Short prompts over narrow masks take `_walk_short`.
        """
        n = len(block_hashes)
        if not n or not self._row:
            return [], []
        if n <= _FIRST_CHUNK and self._words <= _SHORT_WORDS:
            return self._walk_short(block_hashes, tiers)
        walk = Departures()
        reached: list[Rows] = []
        end = min(n, _FIRST_CHUNK)
        while walk.depth < n:
            rows, cut = self._rows_of(block_hashes[walk.depth : end])
            if not rows.size:
                break
            reached.append(rows[: walk.feed(self._gather(rows, tiers))])
            if cut or walk.emptied:
                break
            end = n
        if self.touch_on_lookup and reached:
            self._recency.touch(np.concatenate(reached) if len(reached) > 1 else reached[0])
        return walk.result()

    def _walk_short(
        self, block_hashes: Sequence[int], tiers: tuple[int, ...]
    ) -> tuple[list[int], list[int]]:
        """`walk_lists` for a short prompt over narrow masks, on Python ints (see `_walk`)."""
        rows, _ = self._rows_of(block_hashes)
        if not rows.size:
            return [], []
        held = self._gather(rows, tiers)
        if held.shape[1] == 1:
            masks: list[int] = held.ravel().tolist()
        else:
            raw, step = held.tobytes(), held.shape[1] * 8
            masks = [int.from_bytes(raw[i : i + step], "little") for i in range(0, len(raw), step)]
        slots, depths, reached = walk_short(masks)
        if self.touch_on_lookup:
            self._recency.touch(rows[:reached])
        return slots, depths

    def _rows_of(self, hashes: Sequence[int]) -> tuple[Rows, bool]:
        """Rows of the leading ``hashes`` present, and whether a missing one cut them short.

        ``itemgetter`` looks up a piece of the prompt in one C loop and stops at the first
        miss, whose key the ``KeyError`` carries; only that piece's found prefix is then looked
        up again, so a miss late in a long prompt costs little extra.
        """
        by_hash = self._row
        parts: list[Rows] = []
        cut = False
        for i in range(0, len(hashes), _LOOKUP_PIECE):
            piece = hashes[i : i + _LOOKUP_PIECE]
            try:
                found = itemgetter(*piece)(by_hash) if len(piece) > 1 else (by_hash[piece[0]],)
            except KeyError as miss:
                found = tuple(map(by_hash.__getitem__, piece[: piece.index(miss.args[0])]))
                cut = True
            parts.append(np.fromiter(found, dtype=np.intp, count=len(found)))
            if cut:
                break
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)), cut

    def approx_bytes(self, width: int) -> int:
        """Estimated memory of the structures, bytes (``width`` = worker slots in use)."""
        del width  # the arrays know their own size
        masks = sum(plane.nbytes for plane in self._mask if plane is not None)
        arrays = masks + self._recency.stamp.nbytes + 8 * len(self._hash)
        return arrays + len(self._row) * _ENTRY_BYTES

    # -- rows --------------------------------------------------------------------------------

    def _column(self, slot: int, tier: int) -> Rows:
        """Rows where ``slot`` holds the block in ``tier`` (a strided scan of one word column)."""
        word, bit = divmod(slot, 64)
        plane = self._mask[tier]
        if word >= self._words or plane is None:
            return np.empty(0, dtype=np.intp)
        column = plane[: len(self._hash), word]
        return np.flatnonzero(column & np.uint64(1 << bit)).astype(np.intp, copy=False)

    def _ensure_slot(self, slot: int) -> tuple[int, np.uint64]:
        """(word, bit) of ``slot``, widening the masks when the slot is new."""
        word, bit = divmod(slot, 64)
        words = self._words
        if word >= words:
            self._words = max(word + 1, 2 * words)
            for t, plane in enumerate(self._mask):
                if plane is not None:
                    grown = np.zeros((plane.shape[0], self._words), dtype=np.uint64)
                    grown[:, :words] = plane
                    self._mask[t] = grown
        return word, np.uint64(1 << bit)

    def _plane(self, tier: int) -> Words:
        """The tier's mask array, created on the tier's first use."""
        plane = self._mask[tier]
        if plane is None:
            rows = self._recency.capacity
            plane = self._mask[tier] = np.zeros((rows, self._words), dtype=np.uint64)
        return plane

    def _gather(self, rows: Rows, tiers: tuple[int, ...]) -> Words:
        """``(len(rows), words)``: the OR over ``tiers`` of the rows' masks."""
        planes = [p for p in (self._mask[t] for t in tiers) if p is not None]
        if not planes:
            return np.zeros((rows.size, self._words), dtype=np.uint64)
        held = planes[0].take(rows, axis=0)
        for plane in planes[1:]:
            held |= plane.take(rows, axis=0)
        return held

    def _allocate(self, hashes: list[int]) -> Rows:
        """Rows for new ``hashes`` (free rows first, then fresh ones), registered in the dict."""
        k = len(hashes)
        reuse = min(k, len(self._free))
        taken = self._free[len(self._free) - reuse :]
        del self._free[len(self._free) - reuse :]
        top = len(self._hash)
        out = taken + list(range(top, top + k - reuse))
        if k > reuse:
            self._hash.extend(repeat(None, k - reuse))
            self._reserve(len(self._hash))
        hash_of = self._hash
        for h, r in zip(hashes, out, strict=True):
            hash_of[r] = h
        self._row.update(zip(hashes, out, strict=True))
        return np.array(out, dtype=np.intp)

    def _reserve(self, rows: int) -> None:
        """Grows the arrays geometrically (up to ``max_blocks`` rows) to hold ``rows`` rows."""
        have = self._recency.capacity
        if rows <= have:
            return
        want = min(self.max_blocks, max(rows, have * _GROWTH // 2))
        for t, plane in enumerate(self._mask):
            if plane is not None:
                grown = np.zeros((want, self._words), dtype=np.uint64)
                grown[:have] = plane
                self._mask[t] = grown
        self._recency.grow(want)

    def _delete_empty(self, rows: Rows) -> None:
        """Deletes the entries of ``rows`` that no slot holds in any tier any more."""
        held = np.zeros(rows.size, dtype=bool)
        for plane in self._mask:
            if plane is not None:
                held |= plane[rows].any(axis=1)
        empty = rows[~held]
        if empty.size:
            self._release(empty)

    def _evict(self, count: int) -> None:
        """Evicts the ``count`` least recently useful entries."""
        chosen: list[int] = []
        top = len(self._hash)
        while len(chosen) < count:
            row = self._recency.take_oldest(top, count - len(chosen))
            if row is None:
                break
            chosen.append(row)
        self._evict_rows(np.array(chosen, dtype=np.intp))

    def _evict_rows(self, rows: Rows) -> None:
        for plane in self._mask:
            if plane is not None:
                self.holders -= _popcount(plane[rows])
                plane[rows] = 0
        self.evictions += int(rows.size)
        self._release(rows, cleared=True)

    def _release(self, rows: Rows, cleared: bool = False) -> None:
        """Frees ``rows`` (their masks already empty) and reports their hashes as deleted."""
        if not cleared:
            for plane in self._mask:
                if plane is not None:
                    plane[rows] = 0
        self._recency.free(rows)
        row_list = rows.tolist()
        hash_of = self._hash
        gone = [hash_of[r] for r in row_list]
        for r in row_list:
            hash_of[r] = None
        by_hash = self._row
        for h in gone:
            del by_hash[h]  # type: ignore[arg-type]
        self._free.extend(row_list)
        if self._on_delete is not None:
            for h in gone:
                self._on_delete(h)  # type: ignore[arg-type]
