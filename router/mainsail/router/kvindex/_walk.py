"""The longest-prefix walk over gathered holder masks: where each worker slot drops out.

Given the masks of a prompt's leading blocks (one row per block, bit ``i`` = slot ``i``),
``alive`` at depth ``d`` is the AND of the first ``d`` rows: the slots holding every block so
far. A slot's prefix length is the depth at which it leaves ``alive``; the walk stops once
``alive`` is empty. `Departures` does this for a whole chunk of blocks with numpy (a running
AND, then XORs of neighbouring depths to find the few where ``alive`` shrinks); `walk_short`
does it one block at a time on Python ints, which is cheaper for a few dozen blocks over narrow
masks.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from mainsail.router.kvindex._slots import bit_positions

Rows = npt.NDArray[np.intp]
Words = npt.NDArray[np.uint64]

_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def bit_counts(words: Words) -> npt.NDArray[np.uint8]:
    """Set bits of each ``uint64``: ``np.bitwise_count`` (numpy >= 2), else a byte table."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    by_byte = _BYTE_BITS[np.ascontiguousarray(words).view(np.uint8)]
    counts: npt.NDArray[np.uint8] = by_byte.reshape(*words.shape, 8).sum(axis=-1, dtype=np.uint8)
    return counts


def slot_bits(words: Words) -> tuple[Rows, Rows]:
    """(row, slot) pairs of the set bits of a ``(n, words)`` mask array.

    Departure masks are sparse (usually one bit), so this peels the lowest set bit of every
    nonzero word per round: rounds = most bits in one word, not the mask width.
    """
    rows, cols = np.nonzero(words)
    values = words[rows, cols]
    out_rows, out_slots = [], []
    one = np.uint64(1)
    while values.size:
        low = values & (~values + one)
        out_rows.append(rows)
        out_slots.append(cols * 64 + bit_counts(low - one).astype(np.intp))
        values = values ^ low
        keep = values != 0
        rows, cols, values = rows[keep], cols[keep], values[keep]
    if not out_rows:
        empty = np.empty(0, dtype=np.intp)
        return empty, empty
    return np.concatenate(out_rows), np.concatenate(out_slots)


class Departures:
    """The walk over consecutive chunks of a prompt's block masks, vectorised per chunk."""

    def __init__(self) -> None:
        self.depth = 0  # blocks consumed so far
        self.emptied = False  # alive became empty: the walk is over
        self._alive: Words | None = None  # slots holding every block consumed so far
        self._gone: list[Words] = []  # per departure, the (words,) mask of slots leaving
        self._gone_depth: list[Rows] = []

    def feed(self, held: Words) -> int:
        """Consumes the next blocks' masks (``(blocks, words)``); returns blocks consumed.

        Fewer than given when ``alive`` empties: the block that empties it is consumed (it was
        reached), the rest are not.
        """
        # Words x blocks, so the running AND and the XORs run along contiguous rows.
        acc = np.ascontiguousarray(held.T)
        alive = self._alive
        if alive is not None:
            acc[:, 0] &= alive
        np.bitwise_and.accumulate(acc, axis=1, out=acc)
        if not acc[:, -1].any():  # alive only shrinks: its nonzero depths are a prefix
            live = int(np.count_nonzero(np.bitwise_or.reduce(acc, axis=0)))
            acc = acc[:, : live + 1]
            self.emptied = True
        start = self.depth
        if alive is not None and start:
            self._gone.append((alive ^ acc[:, 0])[None])
            self._gone_depth.append(np.array([start], dtype=np.intp))
        steps = acc[:, :-1] ^ acc[:, 1:]
        changed = np.flatnonzero(np.bitwise_or.reduce(steps, axis=0))
        if changed.size:
            self._gone.append(steps[:, changed].T)
            self._gone_depth.append(changed + (start + 1))
        self._alive = acc[:, -1].copy()
        self.depth += acc.shape[1]
        return int(acc.shape[1])

    def result(self) -> tuple[list[int], list[int]]:
        """(slots, depths) of every slot with a prefix of at least one block."""
        gone, gone_depth = self._gone, self._gone_depth
        if self._alive is not None and self._alive.any():  # survivors hold everything consumed
            gone = [*gone, self._alive[None]]
            gone_depth = [*gone_depth, np.array([self.depth], dtype=np.intp)]
        if not gone:
            return [], []
        which, slots = slot_bits(np.concatenate(gone))
        return slots.tolist(), np.concatenate(gone_depth)[which].tolist()


def walk_short(masks: list[int]) -> tuple[list[int], list[int], int]:
    """(slots, depths, blocks reached) for a prompt's masks as Python ints, one per block."""
    slots: list[int] = []
    depths: list[int] = []
    alive = -1  # every slot, before the first block
    depth = 0
    reached = len(masks)
    for held_by in masks:
        kept = alive & held_by
        if kept != alive:
            if not kept:
                reached = depth + 1
                break
            if depth:
                gone = bit_positions(alive ^ kept)
                slots += gone
                depths += [depth] * len(gone)
            alive = kept
        depth += 1
    if depth and alive:
        gone = bit_positions(alive)
        slots += gone
        depths += [depth] * len(gone)
    return slots, depths, reached
