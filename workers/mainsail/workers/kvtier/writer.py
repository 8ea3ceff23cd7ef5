"""`BlockWriter`: write-through of committed KV blocks to the shared tier, off the engine thread.

Why a thread with a bounded queue: the engine step must never wait on Redis. The engine
hands over a private copy of its newly hashed blocks, one tensor per step (`submit_rows`
never blocks); this thread stores them in batches of pipelined SETs on one connection,
sending batch N+1 before reading batch N's replies, so Redis stores one batch while this
thread packs the next (`WriteSession`). When Redis is slower than the engine produces
blocks the queue fills and further blocks are dropped and counted (`dropped`): the tier is
a cache, a missing block only costs a recompute later. A batch counts as written only once
its own replies are in; an error loses the batches in flight and opens the tier's circuit.

Blocks this writer stored, or that the engine fetched from the tier, are remembered in a
bounded set so they are not written again; the set is forgotten whenever the tier reports an
error, because a Redis that went away may come back empty.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np
import torch

from mainsail.workers.kvtier.checksum import CHECKSUM_BYTES, checksum_rows
from mainsail.workers.kvtier.codec import BlockCodec
from mainsail.workers.kvtier.resp import SMALL_BLOCK_BYTES, Value
from mainsail.workers.kvtier.sharded import KVTier
from mainsail.workers.kvtier.write_session import WriteSession

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
    ``max_batch_bytes``: encoded bytes per pipelined batch of SETs.
    ``remember_blocks``: how many stored hashes are remembered to skip rewrites.
    """

    def __init__(
        self,
        tier: KVTier,
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
        self._items: deque[_Rows] = deque()
        self._queued = 0  # blocks in `_items`
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
        and counted. Only the writer thread removes from the queue, so submitting every
        accepted hash right after finds room.
        """
        with self._cond:
            self._forget_after_errors()
            fresh = [h for h in block_hashes if h not in self._known]
            self.stats.skipped_known += len(block_hashes) - len(fresh)
            room = max(0, self.max_queue_blocks - self._queued)
            self.stats.dropped += max(0, len(fresh) - room)
            return fresh[:room]

    def submit_rows(self, block_hashes: list[int], blocks: torch.Tensor) -> int:
        """Queue ``blocks[i]`` for ``block_hashes[i]`` (a private copy, ``[n, *codec.shape]``,
        as `ModelRunner.read_blocks` makes it); returns how many were queued.

        The tensor is kept whole, not split per block: the writer sends its rows as they
        are. Those beyond the queue's room are dropped and counted.
        """
        if blocks.shape[1:] != torch.Size(self.codec.shape) or blocks.shape[0] != len(block_hashes):
            raise ValueError(f"{len(block_hashes)} hashes for blocks {tuple(blocks.shape)}")
        with self._cond:
            room = max(0, self.max_queue_blocks - self._queued)
            n = min(room, len(block_hashes))
            if n:
                self._items.append(_Rows(list(block_hashes[:n]), blocks[:n]))
                self._queued += n
            self.stats.submitted += n
            self.stats.dropped += len(block_hashes) - n
            self._cond.notify()
            return n

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
        """Wait until every queued block is written or dropped, replies included; False on
        timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queued and not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (bounded by ``timeout``) and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def known(self) -> list[int]:
        """Hashes this worker knows to be in the tier (it stored or fetched them), oldest
        first, at most ``remember_blocks``: the tier part of a KV event snapshot."""
        with self._cond:
            self._forget_after_errors()
            return list(self._known)

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

    def _take(self) -> _Rows:
        """The next batch: up to `batch_blocks` queued blocks (one tensor if they allow)."""
        parts: list[_Rows] = []
        room = self.batch_blocks
        while self._items and room:
            head = self._items[0]
            if len(head.hashes) <= room:
                parts.append(self._items.popleft())
            else:
                parts.append(_Rows(head.hashes[:room], head.blocks[:room]))
                self._items[0] = _Rows(head.hashes[room:], head.blocks[room:])
            room -= len(parts[-1].hashes)
        taken = self.batch_blocks - room
        self._queued -= taken
        if len(parts) == 1:
            return parts[0]
        return _Rows([h for p in parts for h in p.hashes], torch.cat([p.blocks for p in parts]))

    def _rows(self, blocks: torch.Tensor) -> np.ndarray:
        """The blocks' values after the header, as uint8 rows: each block's bytes followed by
        its checksum (`checksum.py`; one copy)."""
        blocks = blocks.detach().to("cpu", self.codec.dtype).contiguous()
        data = blocks.view(torch.uint8).reshape(blocks.shape[0], -1).numpy()
        rows: np.ndarray = np.empty((data.shape[0], data.shape[1] + CHECKSUM_BYTES), np.uint8)
        rows[:, : data.shape[1]] = data
        rows[:, data.shape[1] :] = checksum_rows(data)
        return rows

    def _send(self, writes: WriteSession, batch: _Rows) -> list[int] | None:
        """Send one batch; the hashes it stores once confirmed, None if it was not sent."""
        if self.codec.block_bytes() <= SMALL_BLOCK_BYTES:
            rows = self._rows(batch.blocks)
            sent = writes.send_rows(batch.hashes, self.codec.header, rows)
            return batch.hashes if sent else None
        values = self._values(batch)
        return list(values) if writes.send(values) else None

    def _store(self, batch: _Rows) -> list[int]:
        """Store one batch and wait for it (no session: circuit open, or no pool of our own)."""
        if self.codec.block_bytes() <= SMALL_BLOCK_BYTES:
            hashes = batch.hashes
            stored = self.tier.store_rows(hashes, self.codec.header, self._rows(batch.blocks))
            return hashes if stored == len(hashes) else []
        values = self._values(batch)
        return list(values) if self.tier.store(values) == len(values) else []

    def _values(self, batch: _Rows) -> dict[int, Value]:
        blocks = batch.blocks
        return {h: self.codec.parts(blocks[i]) for i, h in enumerate(batch.hashes)}

    def _run(self) -> None:
        """Send batch N+1, then read batch N's replies: Redis stores one batch while this
        thread packs the next. At most `_DEPTH` batches are in flight; a batch counts as
        written only once its own replies are in (an error loses every batch in flight)."""
        writes: WriteSession | None = None
        in_flight: deque[list[int]] = deque()
        while True:
            if writes is not None and not in_flight and not self._queued:
                writes.close()  # idle: the connection goes back to the pool
                writes = None
            with self._cond:
                if not in_flight:
                    self._cond.wait_for(lambda: self._queued > 0 or self._closing)
                    if not self._queued:
                        break
                batch = self._take() if len(in_flight) < _DEPTH and self._queued else None
                self._busy = True
                more = self._queued > 0
            written: list[int] = []
            try:
                if batch is not None:
                    if writes is None or writes.failed:
                        writes = self.tier.open_writes()
                    if writes is None:
                        written = self._store(batch)
                    elif (sent := self._send(writes, batch)) is not None:
                        in_flight.append(sent)
                    elif writes.failed:
                        in_flight.clear()  # lost with the connection, never counted
                if writes is not None and in_flight and (len(in_flight) >= _DEPTH or not more):
                    if writes.confirm() is None:
                        in_flight.clear()
                    else:
                        written = in_flight.popleft()
            except Exception:  # an encoding bug must not kill the thread
                log.exception("KV tier writer failed on a batch")
                if writes is not None:
                    writes.close()
                    writes = None
                in_flight.clear()
            with self._cond:
                self._busy = bool(in_flight)
                self.stats.written += len(written)
                self._stored.extend(written)
                self._remember(written)
                self._cond.notify_all()
        if writes is not None:
            writes.close()


_DEPTH = 2  # batches in flight: one being stored by Redis, one being packed and sent


@dataclass(frozen=True)
class _Rows:
    """Queued blocks: ``blocks[i]`` (``[n, *codec.shape]``) is the block of ``hashes[i]``."""

    hashes: list[int]
    blocks: torch.Tensor
