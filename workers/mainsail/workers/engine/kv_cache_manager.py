"""`KVCacheManager`: block tables of sequences on top of the `BlockAllocator`.

A sequence's KV for token ``j`` lives in ``table.block_ids[j // block_size]``. This module
decides which blocks a sequence gets:

* prefix reuse: a new sequence's leading full blocks whose chained hashes are cached are
  shared instead of recomputed (at most ``len - 1`` tokens, so one token is always computed
  and yields logits);
* growth: before a step, enough blocks are added for the tokens the step computes;
* copy-on-write: a forked sequence shares its parent's blocks, and the first write into a
  shared, partially filled block copies it to a private one (the copy is returned for the
  model runner to perform before the step);
* hashing: once a block is full and computed, its hash is committed so others can reuse it;
* freeing: blocks are released tail first, so a prompt's later blocks are evicted first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mainsail.workers.engine.block_allocator import BlockAllocator

BlockCopy = tuple[int, int]


@dataclass
class BlockTable:
    """The blocks of one sequence, and how many of them carry a committed hash."""

    block_ids: list[int] = field(default_factory=list)
    committed: int = 0


class KVCacheManager:
    """Allocates, shares, hashes and frees the blocks of sequences."""

    def __init__(self, allocator: BlockAllocator, block_size: int) -> None:
        self.allocator = allocator
        self.block_size = block_size

    def cached_prefix(self, block_hashes: Sequence[int], num_tokens: int) -> list[int]:
        """Cached blocks matching the leading hashes (leaving at least one token to compute)."""
        limit = min(len(block_hashes), (num_tokens - 1) // self.block_size)
        hits: list[int] = []
        for h in block_hashes[:limit]:
            block = self.allocator.lookup(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def blocks_to_admit(self, hits: Sequence[int], num_tokens: int) -> int:
        """Free blocks consumed by admitting with ``hits`` and computing to ``num_tokens``."""
        revived = sum(1 for b in hits if self.allocator.ref_count(b) == 0)
        return revived + max(0, self._blocks_for(num_tokens) - len(hits))

    def admit(self, table: BlockTable, hits: Sequence[int]) -> int:
        """Start ``table`` with the prefix hits; returns the number of cached tokens."""
        if table.block_ids:
            raise ValueError("admit needs an empty block table")
        for block in hits:
            self.allocator.acquire(block)
        table.block_ids = list(hits)
        table.committed = len(hits)
        return len(hits) * self.block_size

    def blocks_to_grow(self, table: BlockTable, num_computed: int, num_new: int) -> int:
        """Free blocks needed to compute ``num_new`` more tokens (copy-on-write included)."""
        need = max(0, self._blocks_for(num_computed + num_new) - len(table.block_ids))
        return need + (1 if self._needs_copy(table, num_computed) else 0)

    def grow(self, table: BlockTable, num_computed: int, num_new: int) -> list[BlockCopy]:
        """Add blocks for ``num_new`` tokens after ``num_computed``; return needed copies."""
        if self.blocks_to_grow(table, num_computed, num_new) > self.allocator.num_free:
            raise ValueError("not enough free KV blocks; check blocks_to_grow first")
        copies: list[BlockCopy] = []
        if self._needs_copy(table, num_computed):
            idx = num_computed // self.block_size
            src = table.block_ids[idx]
            dst = self.allocator.allocate()
            self.allocator.release(src)
            table.block_ids[idx] = dst
            copies.append((src, dst))
        while len(table.block_ids) < self._blocks_for(num_computed + num_new):
            table.block_ids.append(self.allocator.allocate())
        return copies

    def commit(
        self, table: BlockTable, block_hashes: Sequence[int], num_computed: int
    ) -> list[tuple[int, int]]:
        """Hash every full block whose KV is now computed; returns the new (block, hash)s."""
        full = min(num_computed // self.block_size, len(block_hashes), len(table.block_ids))
        new: list[tuple[int, int]] = []
        for i in range(table.committed, full):
            if self.allocator.commit(table.block_ids[i], block_hashes[i]):
                new.append((table.block_ids[i], block_hashes[i]))
        table.committed = max(table.committed, full)
        return new

    def fork(self, parent: BlockTable) -> BlockTable:
        """A new table sharing all of ``parent``'s blocks (copy-on-write on first write)."""
        for block in parent.block_ids:
            self.allocator.share(block)
        return BlockTable(list(parent.block_ids), parent.committed)

    def free(self, table: BlockTable) -> None:
        """Release every block of ``table``, last block first, and empty it."""
        for block in reversed(table.block_ids):
            self.allocator.release(block)
        table.block_ids.clear()
        table.committed = 0

    def _blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _needs_copy(self, table: BlockTable, num_computed: int) -> bool:
        idx = num_computed // self.block_size
        return (
            num_computed % self.block_size != 0
            and idx < len(table.block_ids)
            and self.allocator.ref_count(table.block_ids[idx]) > 1
        )
