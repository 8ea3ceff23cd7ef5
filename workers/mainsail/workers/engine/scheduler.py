"""`Scheduler`: continuous batching with chunked prefill under a per-step token budget.

Each step:

1. Running sequences, highest priority first, each get the tokens they still need to compute
   (one for a decode, a chunk of the remaining prompt for a prefill), capped by what is left
   of ``max_batched_tokens``. If their blocks cannot grow, the lowest-priority running
   sequence is preempted by recompute (its blocks are freed, it goes back to waiting; its
   hashed blocks stay cached, so the recompute is often a prefix hit).
2. If nothing was preempted, waiting sequences, highest priority first, are admitted while
   budget, ``max_num_seqs`` and free blocks allow, reusing cached prefix blocks. Admission
   stops at the first one that does not fit, so priority order holds.

The scheduler only books blocks and tokens; the engine runs the model and advances
``num_computed`` afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mainsail.workers.engine.kv_cache_manager import BlockCopy, KVCacheManager
from mainsail.workers.engine.sequence import Sequence, Status


@dataclass
class ScheduledBatch:
    """What one step computes: per sequence, how many new tokens; plus block copies."""

    items: list[tuple[Sequence, int]] = field(default_factory=list)
    copies: list[BlockCopy] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    prefix_hit_tokens: int = 0
    prefix_query_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.items)


class Scheduler:
    """Owns the waiting and running queues."""

    def __init__(self, kv: KVCacheManager, max_num_seqs: int, max_batched_tokens: int) -> None:
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take ``seq`` out of the queues and free its blocks (finish or abort)."""
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.kv.free(seq.table)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_batched_tokens
        self.running.sort(key=lambda s: s.priority_key)
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = min(seq.num_tokens - seq.num_computed, budget)
            if self._grow_or_preempt(seq, num_new, batch):
                budget -= num_new
                i += 1
        if batch.preempted:
            return batch
        self.waiting.sort(key=lambda s: s.priority_key)
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            hits = self.kv.cached_prefix(seq.block_hashes, seq.num_tokens)
            computed = len(hits) * self.kv.block_size
            num_new = min(seq.num_tokens - computed, budget)
            if self.kv.blocks_to_admit(hits, computed + num_new) > self.kv.allocator.num_free:
                break
            self.waiting.pop(0)
            seq.num_computed = self.kv.admit(seq.table, hits)
            if seq.cached_tokens is None:
                seq.cached_tokens = seq.num_computed
            batch.prefix_hit_tokens += seq.num_computed
            batch.prefix_query_tokens += seq.num_tokens
            batch.copies += self.kv.grow(seq.table, seq.num_computed, num_new)
            seq.status = Status.RUNNING
            self.running.append(seq)
            batch.items.append((seq, num_new))
            budget -= num_new
        return batch

    def _grow_or_preempt(self, seq: Sequence, num_new: int, batch: ScheduledBatch) -> bool:
        """Book blocks for ``seq``, preempting from the back; False if ``seq`` itself went."""
        while (
            self.kv.blocks_to_grow(seq.table, seq.num_computed, num_new)
            > self.kv.allocator.num_free
        ):
            victim = self.running.pop()
            self.kv.free(victim.table)
            victim.reset_for_recompute()
            self.waiting.append(victim)
            batch.preempted.append(victim)
            if victim is seq:
                return False
        batch.copies += self.kv.grow(seq.table, seq.num_computed, num_new)
        batch.items.append((seq, num_new))
        return True
