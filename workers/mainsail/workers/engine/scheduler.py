"""`Scheduler`: continuous batching with chunked prefill under a per-step token budget.

Each step:

1. Running sequences each get the tokens they still need to compute, capped by what is left
   of ``max_batched_tokens``: first every decode (one token each), then prefill chunks with
   the rest of the budget — Sarathi-Serve's stall-free batching, so a decode whose TPOT is
   at stake is never starved by a long prompt; ``max_batched_tokens`` is the token budget
   that bounds a step's time. Within each kind, highest priority first, then earliest
   deadline (`Sequence.deadline`: the request's TTFT budget, then one TPOT per token). If
   blocks cannot grow, the lowest-priority, latest-deadline running sequence not yet in this
   step is preempted by recompute (its blocks are freed, it goes back to waiting; its hashed
   blocks stay cached, so the recompute is often a prefix hit).
2. If nothing was preempted, waiting sequences — highest priority first, earliest deadline
   first within a priority — are admitted while budget, ``max_num_seqs`` and free blocks
   allow, reusing cached prefix blocks. Admission stops at the first one that does not fit,
   so that order holds.

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
        decodes_first = sorted(self.running, key=lambda s: not s.decoding)  # stable
        scheduled: set[int] = set()
        for seq in decodes_first:
            if budget <= 0:
                break
            if seq.status is not Status.RUNNING:
                continue  # preempted for an earlier one this step
            num_new = min(seq.num_tokens - seq.num_computed, budget)
            if self._grow_or_preempt(seq, num_new, batch, scheduled):
                budget -= num_new
                scheduled.add(id(seq))
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

    def _grow_or_preempt(
        self, seq: Sequence, num_new: int, batch: ScheduledBatch, scheduled: set[int]
    ) -> bool:
        """Book blocks for ``seq``, preempting from the back the running sequences not yet
        in this step (``scheduled`` holds their ids); False if ``seq`` itself went."""
        while (
            self.kv.blocks_to_grow(seq.table, seq.num_computed, num_new)
            > self.kv.allocator.num_free
        ):
            at = next(i for i in range(len(self.running) - 1, -1, -1)
                      if id(self.running[i]) not in scheduled)  # fmt: skip
            victim = self.running.pop(at)
            self.kv.free(victim.table)
            victim.reset_for_recompute()
            self.waiting.append(victim)
            batch.preempted.append(victim)
            if victim is seq:
                return False
        batch.copies += self.kv.grow(seq.table, seq.num_computed, num_new)
        batch.items.append((seq, num_new))
        return True
