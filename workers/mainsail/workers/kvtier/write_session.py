"""`WriteSession`: pipelined SETs of KV blocks on one Redis connection, two batches in flight.

Split from `redis_tier` so each module stays about one thing: this one is the write pipeline's
bookkeeping. It works on what the tier hands it — the SET packing (`resp.SetCommands`), the
circuit breaker and the counters (`circuit`) — never on the tier itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import redis

from mainsail.workers.kvtier.circuit import CircuitBreaker, TierStats
from mainsail.workers.kvtier.pipeline import Payload, ReplyPipe
from mainsail.workers.kvtier.resp import Buffer, SetCommands, Value, pack, read_ok


class WriteSession:
    """Pipelined SETs on one connection: `send` or `send_rows` a batch, `confirm` the oldest.

    Why: `BlockWriter` keeps two batches in flight (send batch N+1, then read batch N's
    replies), so Redis stores one while the client packs the next. A batch counts as stored
    (tier stats, `confirm`'s answer) only once its own replies checked out. Any Redis error
    opens the tier's circuit and ends the session (`failed`): every batch in flight is lost,
    and the caller opens a new session later, as the circuit allows.
    """

    def __init__(
        self, pipe: ReplyPipe, sets: SetCommands, breaker: CircuitBreaker, stats: TierStats
    ) -> None:
        self._pipe = pipe
        self._sets = sets
        self._breaker = breaker
        self._stats = stats
        self._sizes: deque[list[int]] = deque()  # [blocks, bytes] per batch in flight
        self.failed = False

    @property
    def in_flight(self) -> int:
        """Batches sent and not confirmed yet."""
        return len(self._sizes)

    def send(self, blocks: Mapping[int, Value]) -> bool:
        """Send SETs of ``blocks`` (hash -> value or its parts); False if not sent."""
        commands = self._sets.commands(blocks)
        size = [len(blocks), sum(_size(v) for v in blocks.values())]
        n = len(blocks)
        return self._send(size, lambda: pack(commands), lambda conn: read_ok(conn, n))

    def send_rows(
        self,
        block_hashes: Sequence[int],
        header: bytes,
        rows: np.ndarray | Callable[[int, int], np.ndarray],
    ) -> bool:
        """Send SETs of ``header`` + row ``i`` for each hash (see `RedisKVTier.store_rows`)."""
        sets, n = self._sets, len(block_hashes)
        get_rows = rows if callable(rows) else _slicer(rows)
        keys = sets.keys(block_hashes)
        size = [n, 0]

        def payload() -> Iterator[Buffer]:
            step, start = 8, 0  # a small first chunk gets Redis going; then by bytes
            while start < n:
                data = get_rows(start, min(n, start + step))
                if data.ndim != 2 or data.dtype != np.uint8 or data.shape[0] < 1:
                    raise ValueError(f"store_rows: rows must be uint8 rows, got {data.shape}")
                end = start + data.shape[0]
                size[1] = n * (len(header) + data.shape[1])
                step = max(1, _CHUNK_BYTES // data.shape[1])
                batch = sets.batch(header, data.shape[1])
                yield batch.pack(keys[start:end], data).reshape(-1).data
                start = end

        return self._send(size, payload, lambda conn: read_ok(conn, n))

    def confirm(self) -> int | None:
        """Blocks of the oldest batch in flight, once its replies are all ``+OK``; None if
        the session failed (this batch and any after it are lost)."""
        if self.failed or not self._sizes:
            return None
        try:
            self._pipe.receive()
        except redis.RedisError as exc:
            self._fail(exc)
            return None
        except BaseException:
            self._fail(None)
            raise
        blocks, nbytes = self._sizes.popleft()
        self._stats.add(stored_blocks=blocks, bytes_written=nbytes)
        return blocks

    def close(self) -> None:
        """Give the connection back; batches not confirmed are lost (never counted)."""
        self._sizes.clear()
        self._pipe.close()

    def _send(self, size: list[int], payload: Payload, receive: Callable[[Any], None]) -> bool:
        if self.failed:
            return False
        if not self._breaker.available():  # another thread saw Redis fail: drop at no cost
            self._breaker.skip(size[0])
            return False
        self._sizes.append(size)
        try:
            self._pipe.send(payload, receive)
        except redis.RedisError as exc:
            self._fail(exc)
            return False
        except BaseException:
            self._fail(None)
            raise
        return True

    def _fail(self, exc: redis.RedisError | None) -> None:
        self.failed = True
        self._sizes.clear()
        self._pipe.close()
        if exc is not None:
            self._breaker.trip(exc)


_CHUNK_BYTES = 256 << 10  # per send of `store_rows`: Redis stores one while the next is packed


def _slicer(rows: np.ndarray) -> Callable[[int, int], np.ndarray]:
    return lambda start, end: rows[start:end]


def _size(value: Value) -> int:
    parts = value if isinstance(value, tuple) else (value,)
    return sum(map(len, parts))
