"""Worker ids <-> small integers, so holder sets are bitmasks.

Why bitmasks: the longest-prefix walk intersects "workers still matching" with "workers holding
this block" once per block. As rows of ``uint64`` words (see `_table`), that intersection is a
vectorised AND over ``workers / 64`` machine words for the whole prompt at once, instead of a
per-worker Python loop. Released slots are reused lowest-first to keep the masks narrow.
"""

from __future__ import annotations

import heapq


class WorkerSlots:
    """Assigns each known worker a bit position."""

    def __init__(self) -> None:
        self._slot: dict[str, int] = {}
        self._worker: list[str | None] = []
        self._free: list[int] = []

    def __len__(self) -> int:
        return len(self._slot)

    def ids(self) -> frozenset[str]:
        """Every worker holding a slot."""
        return frozenset(self._slot)

    def get(self, worker_id: str) -> int | None:
        """The worker's slot, or None if unknown."""
        return self._slot.get(worker_id)

    def assign(self, worker_id: str) -> int:
        """The worker's slot, allocating the lowest free one on first sight."""
        slot = self._slot.get(worker_id)
        if slot is not None:
            return slot
        if self._free:
            slot = heapq.heappop(self._free)
            self._worker[slot] = worker_id
        else:
            slot = len(self._worker)
            self._worker.append(worker_id)
        self._slot[worker_id] = slot
        return slot

    def release(self, worker_id: str) -> int | None:
        """Frees the worker's slot (the caller has cleared its bits); returns it."""
        slot = self._slot.pop(worker_id, None)
        if slot is not None:
            self._worker[slot] = None
            heapq.heappush(self._free, slot)
        return slot

    def worker(self, slot: int) -> str:
        """The worker id holding ``slot``."""
        worker_id = self._worker[slot]
        if worker_id is None:
            raise KeyError(slot)
        return worker_id

    def name_depths(self, slots: list[int], depths: list[int]) -> dict[str, int]:
        """Worker id -> depth from parallel lists; every slot must be in use.

        One C-level pass (``map`` over the slot list) rather than a Python call per worker,
        which at a thousand matching workers was a visible part of every routing decision.
        """
        ids = list(map(self._worker.__getitem__, slots))
        if None in ids:
            raise KeyError("a released slot has a depth")
        return dict(zip(ids, depths, strict=True))  # type: ignore[arg-type]

    @property
    def width(self) -> int:
        """Highest slot ever used plus one (bits per mask)."""
        return len(self._worker)


def bit_positions(mask: int) -> list[int]:
    """Positions of the set bits of a non-negative ``mask`` (any order).

    Sparse masks peel the top bit (a few big-int operations per set bit); dense ones scan the
    binary string once (linear in the width), which wins above roughly one bit in ten.
    """
    if mask.bit_count() * 10 <= mask.bit_length():
        out = []
        while mask:
            top = mask.bit_length() - 1
            out.append(top)
            mask ^= 1 << top
        return out
    return [i for i, c in enumerate(bin(mask)[:1:-1]) if c == "1"]
