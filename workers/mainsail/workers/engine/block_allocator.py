"""`BlockAllocator`: reference-counted KV blocks with a content-hash cache and LRU eviction.

Every block is either referenced (``ref > 0``, owned by one or more sequences) or free. A free
block may still hold reusable KV: if it has a hash, a later request with the same prefix takes
it back (`acquire`) instead of recomputing. Free blocks queue in least-recently-freed order;
`allocate` takes the oldest, and if that block still had a hash the hash is dropped (an
eviction, reported as a "removed" `KVEvent`). Hashing a full block reports "stored".

Invariants (checked by `check`, exercised with Hypothesis): a block is in the free queue iff
its ``ref`` is 0; ``by_hash`` and ``hash_of`` are inverse maps; a hash names at most one block.
Pure bookkeeping, no tensors: the cache contents live in the model runner.
"""

from __future__ import annotations

from collections import OrderedDict

from mainsail.workers.engine.kv_events import KVEvent


class NoFreeBlocksError(RuntimeError):
    """Every block is referenced; the scheduler must preempt or wait."""


class BlockAllocator:
    """Owns ``num_blocks`` block ids and their reference counts and hashes."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self._ref = [0] * num_blocks
        self._hash_of: list[int | None] = [None] * num_blocks
        self._by_hash: dict[int, int] = {}
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._events: list[tuple[str, int]] = []

    @property
    def num_free(self) -> int:
        """Blocks that `allocate` can hand out (cached ones included: they get evicted)."""
        return len(self._free)

    @property
    def num_used(self) -> int:
        """Blocks referenced by at least one sequence."""
        return self.num_blocks - len(self._free)

    def ref_count(self, block: int) -> int:
        return self._ref[block]

    def lookup(self, block_hash: int) -> int | None:
        """The block holding KV for ``block_hash``, referenced or not."""
        return self._by_hash.get(block_hash)

    def allocate(self) -> int:
        """A fresh block with ``ref == 1``, evicting the least recently freed one."""
        if not self._free:
            raise NoFreeBlocksError("no free KV blocks")
        block, _ = self._free.popitem(last=False)
        self._forget(block)
        self._ref[block] = 1
        return block

    def acquire(self, block: int) -> None:
        """Take a reference to a cached block (a prefix hit), reviving it if it was free."""
        if self._ref[block] == 0:
            if self._hash_of[block] is None:
                raise ValueError(f"block {block} is free and holds no cached KV")
            del self._free[block]
        self._ref[block] += 1

    def share(self, block: int) -> None:
        """Add a reference to a block already in use (a forked sequence)."""
        if self._ref[block] < 1:
            raise ValueError(f"cannot share free block {block}")
        self._ref[block] += 1

    def release(self, block: int) -> None:
        """Drop one reference; at zero the block becomes the most recently freed."""
        if self._ref[block] < 1:
            raise ValueError(f"double free of KV block {block}")
        self._ref[block] -= 1
        if self._ref[block] == 0:
            self._free[block] = None

    def commit(self, block: int, block_hash: int) -> bool:
        """Record that ``block`` holds the full block named ``block_hash``; True if new.

        False when the block is already hashed or another block holds that hash.
        """
        if self._ref[block] < 1:
            raise ValueError(f"cannot hash free block {block}")
        if self._hash_of[block] is not None or block_hash in self._by_hash:
            return False
        self._hash_of[block] = block_hash
        self._by_hash[block_hash] = block
        self._events.append(("stored", block_hash))
        return True

    def evict(self, max_blocks: int) -> list[int]:
        """Forget up to ``max_blocks`` least recently used cached hashes of free blocks."""
        dropped: list[int] = []
        for block in self._free:
            if len(dropped) >= max_blocks:
                break
            h = self._hash_of[block]
            if h is not None:
                self._forget(block)
                dropped.append(h)
        return dropped

    def cached_hashes(self) -> list[int]:
        """Every hash whose KV is held (referenced or free), in no particular order."""
        return list(self._by_hash)

    def drain_events(self) -> list[KVEvent]:
        """Events since the last drain, consecutive ones of a kind grouped, in order."""
        out: list[KVEvent] = []
        for kind, h in self._events:
            if out and out[-1].kind == kind:
                out[-1].block_hashes.append(h)
            else:
                out.append(
                    KVEvent(kind="stored" if kind == "stored" else "removed", block_hashes=[h])
                )
        self._events.clear()
        return out

    def check(self) -> None:
        """Raise AssertionError if an invariant is broken (tests and debugging)."""
        for b in range(self.num_blocks):
            if (self._ref[b] == 0) != (b in self._free):
                raise AssertionError(f"block {b}: ref {self._ref[b]} but free={b in self._free}")
            if self._ref[b] < 0:
                raise AssertionError(f"block {b}: negative ref")
            h = self._hash_of[b]
            if h is not None and self._by_hash.get(h) != b:
                raise AssertionError(f"block {b}: hash map out of sync")
        for h, b in self._by_hash.items():
            if self._hash_of[b] != h:
                raise AssertionError(f"hash {h}: points to block {b} holding another hash")

    def _forget(self, block: int) -> None:
        h = self._hash_of[block]
        if h is not None:
            del self._by_hash[h]
            self._hash_of[block] = None
            self._events.append(("removed", h))
