"""The KV tier's counters and its circuit breaker, shared by the tier, its write sessions and
the loader's threads.

Why objects of their own: a `WriteSession` must count what it stored and open the circuit when
Redis fails, and it used to do so by reaching into `RedisKVTier`'s private lock, fields and
methods. Now the tier hands each session these two objects; each keeps its own lock.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class TierStats:
    """Counters for metrics and benchmarks; `add` is safe from any thread."""

    stored_blocks: int = 0
    fetched_blocks: int = 0
    lookups: int = 0
    hit_blocks: int = 0
    errors: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    skipped_while_down: int = 0
    corrupt_blocks: int = 0  # fetched values whose checksum failed: read as misses
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Adds to the named counters (``stats.add(stored_blocks=3, bytes_written=n)``)."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def record_lookup(self, present: Sequence[bool]) -> int:
        """Count one lookup whose blocks (in prompt order) were ``present`` or not; returns its
        leading hits: the blocks found before the first miss (a later one is useless alone)."""
        hits = next((i for i, found in enumerate(present) if not found), len(present))
        self.add(lookups=1, hit_blocks=hits)
        return hits

    def snapshot(self) -> dict[str, int]:
        """The counters at one instant."""
        with self._lock:
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}


class CircuitBreaker:
    """Open for ``backoff_s`` after an error: callers skip Redis (a miss, a dropped write)
    meanwhile; the first call after that probes Redis again."""

    def __init__(self, backoff_s: float, clock: Callable[[], float], stats: TierStats) -> None:
        if backoff_s < 0:
            raise ValueError("backoff_s must be >= 0")
        self.backoff_s = backoff_s
        self._clock = clock
        self._stats = stats
        self._lock = threading.Lock()
        self._down_until = 0.0

    def available(self) -> bool:
        """False while the circuit is open after an error."""
        return self._clock() >= self._down_until

    def trip(self, exc: Exception) -> None:
        """Redis failed: count it and open the circuit for ``backoff_s``."""
        with self._lock:
            self._down_until = self._clock() + self.backoff_s
        self._stats.add(errors=1)
        log.warning("Redis KV tier unavailable for %.1f s: %s", self.backoff_s, exc)

    def skip(self, blocks: int) -> None:
        """Writes dropped because the circuit is open (counted, at no other cost)."""
        self._stats.add(skipped_while_down=blocks)
