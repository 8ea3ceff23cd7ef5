"""`TierLink`: the engine's side of the shared KV tier (Redis): write-through and prefix loads.

Write-through: when full blocks get their hash committed, the engine thread copies them out
of the paged cache (`StepRunner.read_blocks`, one tensor) and hands that copy to a
`BlockWriter` whole, not split per block; the step never waits on Redis. Blocks the writer
stored come back as "stored" events of tier "redis".

Loads: a new request whose prompt has full blocks beyond its local prefix hits is parked
while a `BlockLoader` probes Redis for them (and fetches the leading hits when that is
cheaper than recomputing them). When the load is done, the engine thread copies the fetched
blocks into newly allocated blocks of every layer, hashes them (so they are ordinary local
prefix-cache blocks from then on) and queues the request, whose admission then finds them as
prefix hits. The engine thread stays the only writer of the KV tensors.

While the request waits for admission, its local prefix blocks and the inserted ones are
pinned (referenced) so that allocations of the same step cannot evict them; pins last one
scheduling round only, so they can never starve the cache. Blocks are inserted only while
enough free blocks remain for the running requests' next step (a fetch never forces a
preemption).
"""

from __future__ import annotations

import concurrent.futures
import logging
from concurrent.futures import Future
from pathlib import Path

from mainsail.workers.engine.block_allocator import BlockAllocator
from mainsail.workers.engine.config import EngineConfig
from mainsail.workers.engine.kv_cache_manager import KVCacheManager
from mainsail.workers.engine.kv_events import KVEvent
from mainsail.workers.engine.model_runner import StepRunner
from mainsail.workers.engine.sequence import Sequence
from mainsail.workers.kvtier import (
    BlockCodec,
    BlockLoader,
    BlockWriter,
    KVTier,
    LoadResult,
    RedisKVTier,
    ShardedKVTier,
    kv_namespace,
)
from mainsail.workers.models import ModelConfig

log = logging.getLogger(__name__)
_IDLE_WAIT_S = 0.01


class TierLink:
    """Connects one engine's paged cache to a shared tier through a writer and a loader."""

    def __init__(
        self,
        writer: BlockWriter,
        loader: BlockLoader,
        runner: StepRunner,
        kv: KVCacheManager,
    ) -> None:
        self.writer = writer
        self.loader = loader
        self._runner = runner
        self._kv = kv
        self._alloc: BlockAllocator = kv.allocator
        self._loads: dict[Sequence, Future[LoadResult]] = {}
        self._pins: list[int] = []
        self.redis_hit_tokens = 0
        self.tier_id = writer.tier.identity()

    @classmethod
    def connect(
        cls,
        config: EngineConfig,
        model_dir: Path,
        model_config: ModelConfig,
        runner: StepRunner,
        kv: KVCacheManager,
    ) -> TierLink:
        """The link for ``config.kv_tier``, namespaced by the KV hash, checkpoint and dtype."""
        source = config.kv_tier
        if source is None:
            raise ValueError("EngineConfig.kv_tier is not set")
        namespace = kv_namespace(config.kv_hash(), model_dir, runner.dtype)
        tier = source if isinstance(source, RedisKVTier | ShardedKVTier) else source(namespace)
        codec = BlockCodec(
            layers=model_config.num_layers,
            block_size=config.block_size,
            kv_heads=model_config.num_kv_heads,
            head_dim=model_config.head_dim,
            dtype=runner.dtype,
            fingerprint=namespace,
        )
        writer = BlockWriter(tier, codec, max_queue_blocks=config.kv_tier_write_queue_blocks)
        return cls(writer, BlockLoader(tier, codec, config.kv_tier_fetch), runner, kv)

    @property
    def tier(self) -> KVTier:
        return self.writer.tier

    # ------------------------------------------------------------------ write-through

    def write_through(self, committed: list[tuple[int, int]]) -> None:
        """Copy newly hashed blocks out of the cache and queue them for the tier."""
        if not committed:
            return
        block_of = {h: b for b, h in committed}
        wanted = self.writer.accept([h for _, h in committed])
        if not wanted:
            return
        copies = self._runner.read_blocks([block_of[h] for h in wanted])
        self.writer.submit_rows(wanted, copies)  # whole: no per-block views to make

    def drain_events(self) -> list[KVEvent]:
        stored = self.writer.drain_stored()
        return [KVEvent(kind="stored", block_hashes=stored, tier="redis")] if stored else []

    # ------------------------------------------------------------------ loads

    @property
    def loading(self) -> int:
        return len(self._loads)

    def start_load(self, seq: Sequence) -> bool:
        """Start probing the tier for ``seq``'s blocks after its local hits; False if pointless."""
        local = len(self._kv.cached_prefix(seq.block_hashes, seq.num_tokens))
        limit = min(len(seq.block_hashes), (seq.num_tokens - 1) // self._kv.block_size)
        if limit <= local or not self.loader.worth_probing(limit - local):
            return False
        self._loads[seq] = self.loader.submit(local, seq.block_hashes[local:limit])
        return True

    def ready(self, wait: bool, reserve: int) -> list[Sequence]:
        """Sequences whose load finished, their blocks inserted and pinned (in arrival order).

        ``wait``: block briefly for the first load when the engine has nothing else to do.
        ``reserve``: free blocks to leave for the running requests' next step.
        """
        if not self._loads:
            return []
        if wait:
            concurrent.futures.wait(
                self._loads.values(), timeout=_IDLE_WAIT_S, return_when="FIRST_COMPLETED"
            )
        done = [seq for seq, fut in self._loads.items() if fut.done()]
        for seq in done:
            fut = self._loads.pop(seq)
            try:
                result = fut.result()
            except Exception:
                log.exception("KV tier load failed; recomputing %s", seq.request_id)
                continue
            self._insert(seq, result, reserve)
            self.loader.recycle(result)
        return done

    def unpin(self) -> None:
        """Release this round's pins (after the scheduler admitted what it could)."""
        for block in self._pins:
            self._alloc.release(block)
        self._pins.clear()

    def forget(self, seq: Sequence) -> None:
        """Drop ``seq``'s pending load (finished or aborted while loading)."""
        fut = self._loads.pop(seq, None)
        if fut is not None:
            fut.cancel()

    def observe_prefill(self, tokens: int, seconds: float) -> None:
        self.loader.observe_prefill(tokens, seconds)

    def close(self) -> None:
        for fut in self._loads.values():
            fut.cancel()
        self._loads.clear()
        self.loader.close()
        self.writer.close()

    def _insert(self, seq: Sequence, result: LoadResult, reserve: int) -> None:
        end = result.start + len(result.hashes)
        targets: list[int] = []
        sources: list[int] = []
        for i, h in enumerate(seq.block_hashes[:end]):
            block = self._alloc.lookup(h)
            if block is not None:
                self._alloc.acquire(block)
                self._pins.append(block)
            elif i >= result.start and self._alloc.num_free > reserve:
                block = self._alloc.allocate()
                self._pins.append(block)
                targets.append(block)
                sources.append(i - result.start)
            else:
                break
        if not targets or result.blocks is None:
            return
        first, last = sources[0], sources[-1]
        contiguous = last - first + 1 == len(sources)  # the usual case: a view, not a copy
        rows = result.blocks[first : last + 1] if contiguous else result.blocks[sources]
        self._runner.write_blocks(targets, rows)
        for block, src in zip(targets, sources, strict=True):
            self._alloc.commit(block, result.hashes[src])
        self.writer.remember([result.hashes[s] for s in sources])
        self.redis_hit_tokens += len(targets) * self._kv.block_size
