"""Row recency for the block table: stamps, and an exact least-recently-useful victim list.

Why stamps instead of an ordered dict: touching a block is then one array write (a whole prompt
is one vectorised write) instead of a ``move_to_end`` per block. Each operation stamps the rows
it touches with consecutive values from a counter, so the order of stamps is exactly the order
sequential ``move_to_end`` calls would have left.

Finding the oldest row: a victim list holds the ``per_pick`` smallest stamps (``argpartition``,
then sorted), each with the stamp it had. Victims are taken oldest first; one whose stamp has
changed since (touched, freed or reused) is skipped; an empty list is refilled. This is exact:
rows outside the list had larger stamps when it was made and stamps only grow, so an untouched
victim is still the oldest row. A refill costs a pass over the stamps, amortised over
``per_pick`` evictions.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Rows = npt.NDArray[np.intp]
Stamps = npt.NDArray[np.int64]

FREE = np.iinfo(np.int64).max
"""Stamp of an unused row: larger than any real stamp, so never the oldest."""


class Recency:
    """One ``int64`` stamp per row (larger = more recently useful) and the victim list."""

    def __init__(self, rows: int, per_pick: int) -> None:
        self.stamp: Stamps = np.full(rows, FREE, dtype=np.int64)
        self._per_pick = max(1, per_pick)
        self._clock = 0  # the next stamp
        self._victims: list[tuple[int, int]] = []  # (row, stamp when listed), oldest last

    @property
    def capacity(self) -> int:
        """Rows with a stamp slot (used or not)."""
        return int(self.stamp.size)

    def grow(self, rows: int) -> None:
        """Extends the stamps to ``rows`` rows (new rows unused)."""
        stamp = np.full(rows, FREE, dtype=np.int64)
        stamp[: self.stamp.size] = self.stamp
        self.stamp = stamp

    def next_stamps(self, n: int) -> Stamps:
        """``n`` consecutive fresh stamps, newer than every stamp given so far."""
        stamps = np.arange(self._clock, self._clock + n, dtype=np.int64)
        self._clock += n
        return stamps

    def touch(self, rows: Rows) -> None:
        """Marks ``rows`` as just used, later positions more recent (a repeat keeps its last)."""
        if rows.size:
            np.maximum.at(self.stamp, rows, self.next_stamps(int(rows.size)))

    def free(self, rows: Rows) -> None:
        """Marks ``rows`` unused."""
        self.stamp[rows] = FREE

    def oldest(self, top: int, wanted: int = 1) -> int | None:
        """The least recently useful row among the first ``top``, or None if none is used.

        ``wanted`` is how many victims the caller is about to take, so a refill lists at least
        that many.
        """
        victims = self._victims
        stamp = self.stamp
        while True:
            while victims:
                row, when = victims[-1]
                if stamp[row] == when:
                    return row
                victims.pop()  # touched, freed or reused since the list was made
            if not self._refill(top, wanted):
                return None

    def take_oldest(self, top: int, wanted: int = 1) -> int | None:
        """`oldest`, removed from the candidates (marked unused) so the next call moves on."""
        row = self.oldest(top, wanted)
        if row is not None:
            self._victims.pop()
            self.stamp[row] = FREE
        return row

    def _refill(self, top: int, wanted: int) -> bool:
        """Lists the oldest used rows, oldest last; False when no row is used."""
        stamps = self.stamp[:top]
        k = min(top, max(wanted, self._per_pick))
        if not k:
            return False
        rows = np.argpartition(stamps, k - 1)[:k] if k < top else np.arange(top)
        rows = rows[np.argsort(stamps[rows])[::-1]]
        rows = rows[stamps[rows] != FREE]
        self._victims[:] = zip(rows.tolist(), stamps[rows].tolist(), strict=True)
        return bool(self._victims)
