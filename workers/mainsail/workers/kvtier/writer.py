"""`BlockWriter`: write-through of committed KV blocks to the shared tier, off the engine thread.

Why a thread with a bounded queue: the engine step must never wait on Redis. The engine
hands over a private copy of each newly hashed block (`submit` never blocks); this thread
stores batches of them, each in one pipelined round trip, the blocks' memory going to the
socket with the codec's header in front and no further copy. When Redis is slower
than the engine produces blocks the queue fills and further blocks are dropped and counted
(`dropped`): the tier is a cache, a missing block only costs a recompute later.

Blocks this writer stored, or that the engine fetched from the tier, are remembered in a
bounded set so they are not written again; the set is forgotten whenever the tier reports an
error, because a Redis that went away may come back empty.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

import torch

from mainsail.workers.kvtier.codec import BlockCodec
from mainsail.workers.kvtier.redis_tier import RedisKVTier
from mainsail.workers.kvtier.resp_batch import SMALL_BLOCK_BYTES

log = logging.getLogger(__name__)


@dataclass
class WriterStats:
    """Blocks handed in, written, dropped on overflow, skipped as already stored."""

    submitted: int = 0
    written: int = 0
    dropped: int = 0
    skipped_known: int = 0


class BlockWriter:
    """Stores ``(hash, block)`` pairs in ``tier`` from a background thread.

    ``max_queue_blocks``: blocks waiting at most (memory bound: that many block copies).
    ``max_batch_bytes``: encoded bytes per pipelined store (one round trip).
    ``remember_blocks``: how many stored hashes are remembered to skip rewrites.
    """

    def __init__(
        self,
        tier: RedisKVTier,
        codec: BlockCodec,
        *,
        max_queue_blocks: int = 256,
        max_batch_bytes: int = 16 << 20,
        remember_blocks: int = 65536,
    ) -> None:
        if max_queue_blocks < 1 or max_batch_bytes < 1 or remember_blocks < 0:
            raise ValueError("BlockWriter: queue, batch and memory sizes must be positive")
        self.tier = tier
        self.codec = codec
        self.max_queue_blocks = max_queue_blocks
        self.batch_blocks = max(1, max_batch_bytes // max(1, codec.block_bytes()))
        self.remember_blocks = remember_blocks
        self.stats = WriterStats()
        self._items: deque[tuple[int, torch.Tensor]] = deque()
        self._known: OrderedDict[int, None] = OrderedDict()
        self._errors_seen = 0
        self._stored: list[int] = []
        self._busy = False
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="mainsail-kv-writer", daemon=True)
        self._thread.start()

    def accept(self, block_hashes: list[int]) -> list[int]:
        """The hashes worth copying and submitting now, in order.

        Hashes known to be stored are skipped; those beyond the queue's free room are dropped
        and counted. Only the writer thread removes from the queue, so `submit` of every
        accepted hash right after finds room.
        """
        with self._cond:
            self._forget_after_errors()
            fresh = [h for h in block_hashes if h not in self._known]
            self.stats.skipped_known += len(block_hashes) - len(fresh)
            room = max(0, self.max_queue_blocks - len(self._items))
            self.stats.dropped += max(0, len(fresh) - room)
            return fresh[:room]

    def submit(self, block_hash: int, block: torch.Tensor) -> bool:
        """Queue ``block`` (a private copy the caller no longer touches); False if dropped."""
        return self.submit_many([(block_hash, block)]) == 1

    def submit_many(self, blocks: list[tuple[int, torch.Tensor]]) -> int:
        """Queue ``blocks`` at once (one wake-up of the writer); returns how many were queued.

        Those beyond the queue's room are dropped and counted.
        """
        with self._cond:
            room = max(0, self.max_queue_blocks - len(self._items))
            self._items.extend(blocks[:room])
            self.stats.submitted += min(room, len(blocks))
            self.stats.dropped += max(0, len(blocks) - room)
            self._cond.notify()
            return min(room, len(blocks))

    def remember(self, block_hashes: list[int]) -> None:
        """Note blocks known to be in the tier (e.g. just fetched from it)."""
        with self._cond:
            self._remember(block_hashes)

    def drain_stored(self) -> list[int]:
        """Hashes written since the last call (for "stored" KV events of tier "redis")."""
        with self._cond:
            out, self._stored = self._stored, []
        return out

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued block is written or dropped; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._items and not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (bounded by ``timeout``) and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _forget_after_errors(self) -> None:
        errors = self.tier.stats.errors
        if errors != self._errors_seen:
            self._errors_seen = errors
            self._known.clear()

    def _remember(self, block_hashes: list[int]) -> None:
        if not self.remember_blocks:
            return
        for h in block_hashes:
            self._known[h] = None
            self._known.move_to_end(h)
        while len(self._known) > self.remember_blocks:
            self._known.popitem(last=False)

    def _store(self, batch: list[tuple[int, torch.Tensor]]) -> list[int]:
        """Store one batch; the hashes written (all or none)."""
        if self.codec.block_bytes() <= SMALL_BLOCK_BYTES:
            hashes = [h for h, _ in batch]
            blocks = [block for _, block in batch]
            stored = self.tier.store_rows(
                hashes, self.codec.header, lambda start, end: self.codec.rows(blocks[start:end])
            )
            return hashes if stored == len(hashes) else []
        values = {h: self.codec.parts(block) for h, block in batch}
        return list(values) if self.tier.store(values) == len(values) else []

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._items) or self._closing)
                if not self._items:
                    return
                n = min(self.batch_blocks, len(self._items))
                batch = [self._items.popleft() for _ in range(n)]
                self._busy = True
            written: list[int] = []
            try:
                written = self._store(batch)
            except Exception:  # an encoding bug must not kill the thread
                log.exception("KV tier writer failed on a batch of %d blocks", len(batch))
            with self._cond:
                self._busy = False
                self.stats.written += len(written)
                self._stored.extend(written)
                self._remember(written)
                self._cond.notify_all()
