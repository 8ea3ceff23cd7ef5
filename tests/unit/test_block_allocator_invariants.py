"""Property tests of the block allocator and KV cache manager.

Random sequences of allocate (with prefix reuse) / append / fork / free / evict must never
leak or double-free a block, keep reference counts equal to the number of tables holding a
block, and (checked through a shadow copy of block contents) never let one sequence's write
reach another's KV: copy-on-write and prefix sharing stay correct.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.spec.kvhash import chain_hashes
from mainsail.workers.engine.block_allocator import BlockAllocator, NoFreeBlocksError
from mainsail.workers.engine.kv_cache_manager import BlockTable, KVCacheManager

BS = 4
NUM_BLOCKS = 12

# (operation, which sequence or how many blocks, tokens); tokens from {0, 1} so prefixes repeat.
op = st.tuples(
    st.sampled_from(["new", "append", "fork", "free", "evict"]),
    st.integers(0, 3),
    st.lists(st.integers(0, 1), min_size=1, max_size=20),
)


class Shadow:
    """The allocator under test plus what every block should contain."""

    def __init__(self) -> None:
        self.alloc = BlockAllocator(NUM_BLOCKS)
        self.kv = KVCacheManager(self.alloc, BS)
        self.content: dict[int, list[int | None]] = {}
        self.seqs: list[tuple[BlockTable, list[int]]] = []

    def write(
        self, table: BlockTable, tokens: list[int], start: int, copies: list[tuple[int, int]]
    ) -> None:
        for src, dst in copies:
            self.content[dst] = list(self.content[src])
        for p in range(start, len(tokens)):
            block = table.block_ids[p // BS]
            self.content.setdefault(block, [None] * BS)[p % BS] = tokens[p]
        self.kv.commit(table, chain_hashes(tokens, BS), len(tokens))

    def new(self, tokens: list[int]) -> None:
        hashes = chain_hashes(tokens, BS)
        hits = self.kv.cached_prefix(hashes, len(tokens))
        if self.kv.blocks_to_admit(hits, len(tokens)) > self.alloc.num_free:
            return
        table = BlockTable()
        computed = self.kv.admit(table, hits)
        for i, block in enumerate(hits):
            assert self.content[block] == tokens[i * BS : (i + 1) * BS], "prefix hit with wrong KV"
        copies = self.kv.grow(table, computed, len(tokens) - computed)
        self.seqs.append((table, tokens))
        self.write(table, tokens, computed, copies)

    def append(self, i: int, extra: list[int]) -> None:
        if not self.seqs:
            return
        table, tokens = self.seqs[i % len(self.seqs)]
        if self.kv.blocks_to_grow(table, len(tokens), len(extra)) > self.alloc.num_free:
            return
        copies = self.kv.grow(table, len(tokens), len(extra))
        start = len(tokens)
        tokens.extend(extra)
        self.write(table, tokens, start, copies)

    def check(self) -> None:
        self.alloc.check()
        refs: dict[int, int] = {}
        for table, tokens in self.seqs:
            assert len(table.block_ids) == -(-len(tokens) // BS)
            for j, block in enumerate(table.block_ids):
                refs[block] = refs.get(block, 0) + 1
                want = tokens[j * BS : (j + 1) * BS]
                assert self.content[block][: len(want)] == want, (
                    "a write leaked into a shared block"
                )
        for b in range(NUM_BLOCKS):
            assert self.alloc.ref_count(b) == refs.get(b, 0)
        assert self.alloc.num_used == len(refs)


@pytest.mark.unit
@settings(max_examples=60, deadline=None)
@given(st.lists(op, max_size=30))
def test_random_operations_keep_invariants(ops: list[tuple[str, int, list[int]]]) -> None:
    s = Shadow()
    for kind, which, tokens in ops:
        if kind == "new":
            s.new(list(tokens))
        elif kind == "append":
            s.append(which, tokens[:6])
        elif kind == "fork" and s.seqs:
            table, seq_tokens = s.seqs[which % len(s.seqs)]
            s.seqs.append((s.kv.fork(table), list(seq_tokens)))
        elif kind == "free" and s.seqs:
            table, _ = s.seqs.pop(which % len(s.seqs))
            s.kv.free(table)
        elif kind == "evict":
            s.alloc.evict(which)
        s.check()
    for table, _ in s.seqs:
        s.kv.free(table)
    s.seqs.clear()
    s.check()
    assert s.alloc.num_free == NUM_BLOCKS


@pytest.mark.unit
def test_double_free_and_exhaustion_are_refused() -> None:
    alloc = BlockAllocator(2)
    a, b = alloc.allocate(), alloc.allocate()
    with pytest.raises(NoFreeBlocksError):
        alloc.allocate()
    alloc.release(a)
    with pytest.raises(ValueError, match="double free"):
        alloc.release(a)
    alloc.release(b)
    assert alloc.num_free == 2


@pytest.mark.unit
def test_eviction_is_lru_and_reported() -> None:
    alloc = BlockAllocator(3)
    blocks = [alloc.allocate() for _ in range(3)]
    for h, block in enumerate(blocks, start=100):
        alloc.commit(block, h)
    for block in blocks:
        alloc.release(block)
    assert sorted(alloc.cached_hashes()) == [100, 101, 102]
    alloc.acquire(alloc.lookup(101) or 0)
    fresh = alloc.allocate()
    assert fresh == blocks[0] and alloc.lookup(100) is None
    events = alloc.drain_events()
    assert [(e.kind, e.block_hashes) for e in events] == [
        ("stored", [100, 101, 102]),
        ("removed", [100]),
    ]
    assert alloc.drain_events() == []


@pytest.mark.unit
def test_fork_copies_a_shared_partial_block_on_write() -> None:
    s = Shadow()
    s.new([1, 0, 1, 1, 0, 1])
    parent, tokens = s.seqs[0]
    s.seqs.append((s.kv.fork(parent), list(tokens)))
    s.append(0, [0, 0])
    s.append(1, [1, 1])
    s.check()
    assert s.seqs[0][0].block_ids[0] == s.seqs[1][0].block_ids[0]
    assert s.seqs[0][0].block_ids[1] != s.seqs[1][0].block_ids[1]
