"""KV cache of one simulated worker: capacity in blocks, prefix reuse by hash, LRU eviction.

Why this shape: it mirrors a paged engine's prefix cache (vLLM, SGLang, ours). Full prompt
blocks are named by their chained hash; a block stays cached after its request finishes and
is reused by any later request whose prompt starts with the same blocks, until space is needed
and the least recently released block is evicted. Every store and eviction is reported to the
``sink`` as a KV event, exactly what a real worker publishes to the router's index.

Simplifications (stated so results are read correctly):
- A request reserves all its blocks at admission: cached prefix hits are pinned, and room is
  reserved for the uncached prompt blocks, the partial tail block and the output
  (``ceil((prompt + output) / block) - hits`` blocks), so a running request is never preempted.
- Prompt blocks become reusable (and are published) when the prefill chunk that computes them
  finishes; blocks holding generated tokens are never reused.
- On release a request's blocks enter the LRU tail-first, so a prefix outlives its suffix.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol


class KVEventSink(Protocol):
    """Receives a worker's KV events (``kind`` is ``"stored"`` or ``"removed"``)."""

    def __call__(
        self, worker_id: str, kind: str, hashes: list[int], tier: str = "device"
    ) -> None: ...


class SimKVCache:
    """Block accounting and prefix cache of one worker."""

    def __init__(self, worker_id: str, capacity_blocks: int, sink: KVEventSink | None) -> None:
        if capacity_blocks < 1:
            raise ValueError("capacity_blocks must be >= 1")
        self.worker_id = worker_id
        self.capacity = capacity_blocks
        self.sink = sink
        self._refs: dict[int, int] = {}  # hashed blocks in use -> reference count
        self._free_cached: OrderedDict[int, None] = OrderedDict()  # hashed, unused, LRU first
        self._private = 0  # blocks in use that have no reusable hash
        self.evictions = 0

    @property
    def used_blocks(self) -> int:
        """Blocks pinned by running requests."""
        return len(self._refs) + self._private

    @property
    def cached_blocks(self) -> int:
        """Blocks held only as reusable cache (evictable)."""
        return len(self._free_cached)

    def prefix_hits(self, hashes: Sequence[int]) -> int:
        """Number of leading ``hashes`` present (in use or cached)."""
        refs, cached = self._refs, self._free_cached
        n = 0
        for h in hashes:
            if h in refs or h in cached:
                n += 1
            else:
                break
        return n

    def reserve(self, hashes: Sequence[int], total_blocks: int) -> int | None:
        """Pins the cached prefix of ``hashes`` and reserves the rest of ``total_blocks``.

        Returns the number of prefix blocks hit, or None (nothing changed) when the blocks do
        not fit even after evicting every unpinned cached block.
        """
        hits = self.prefix_hits(hashes)
        need = total_blocks - hits
        refs, cached = self._refs, self._free_cached
        pinned_from_cache = sum(1 for h in hashes[:hits] if h in cached)
        free = self.capacity - len(refs) - self._private - len(cached)
        if need > free + len(cached) - pinned_from_cache:
            return None
        for h in hashes[:hits]:
            if h in cached:
                del cached[h]
                refs[h] = 1
            else:
                refs[h] += 1
        self._private += need
        free = self.capacity - len(refs) - self._private - len(cached)
        if free < 0:
            self._evict(-free)
        return hits

    def commit(self, hashes: Sequence[int]) -> None:
        """Turns reserved blocks into reusable cached prompt blocks (after their prefill)."""
        refs, cached = self._refs, self._free_cached
        stored: list[int] = []
        for h in hashes:
            self._private -= 1
            if h in refs:
                refs[h] += 1  # computed concurrently elsewhere: share it, drop our copy
            elif h in cached:
                del cached[h]
                refs[h] = 1
            else:
                refs[h] = 1
                stored.append(h)
        if stored and self.sink is not None:
            self.sink(self.worker_id, "stored", stored)

    def release(self, hashes: Sequence[int], private_blocks: int) -> None:
        """Unpins a finished request's hashed blocks (tail first) and frees its private ones."""
        refs, cached = self._refs, self._free_cached
        for h in reversed(hashes):
            n = refs[h] - 1
            if n:
                refs[h] = n
            else:
                del refs[h]
                cached[h] = None
        self._private -= private_blocks
        if self._private < 0:
            raise ValueError(f"{self.worker_id}: released more private blocks than reserved")

    def insert_cached(self, hashes: Sequence[int], start: int = 0) -> int:
        """Adds ``hashes[start:]`` (fetched from the shared tier) as reusable cached blocks,
        most recently used, evicting older unpinned ones for room; returns how many were added.

        The prompt's leading blocks before ``start`` are refreshed first so the room made for
        the fetched ones never evicts them (the engine pins them, `TierLink._insert`); if one
        of them is gone already, nothing after it is worth inserting. Stops when no room can
        be made (every block pinned)."""
        refs, cached = self._refs, self._free_cached
        for h in hashes[:start]:
            if h in cached:
                cached.move_to_end(h)
            elif h not in refs:
                return 0
        stored: list[int] = []
        for h in hashes[start:]:
            if h in refs:
                continue
            if h in cached:
                cached.move_to_end(h)
                continue
            if len(refs) + self._private + len(cached) >= self.capacity:
                if not cached:
                    break
                self._evict(1)
            cached[h] = None
            stored.append(h)
        if stored and self.sink is not None:
            self.sink(self.worker_id, "stored", stored)
        return len(stored)

    def _evict(self, n: int) -> None:
        cached = self._free_cached
        gone = [cached.popitem(last=False)[0] for _ in range(min(n, len(cached)))]
        self.evictions += len(gone)
        if gone and self.sink is not None:
            self.sink(self.worker_id, "removed", gone)
