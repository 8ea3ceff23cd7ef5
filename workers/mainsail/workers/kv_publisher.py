"""Fans the engine's KV events out to every subscribed router replica.

The engine has one event queue (drained here every `interval` seconds); each router that
calls KVEvents gets its own bounded asyncio queue, starting with a snapshot of every block
the engine holds (and, with a shared tier, of the blocks it knows are there: a router that
starts or reconnects late, or a second router replica, learns the tier too). A subscriber
that falls behind is sent a fresh snapshot instead of an unbounded backlog, so a slow router
can never grow the worker's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.workers.engine import KVEvent

_KINDS = {"stored": pb.KVEvent.KIND_STORED, "removed": pb.KVEvent.KIND_REMOVED}
_TIERS = {"device": pb.KV_TIER_DEVICE, "host": pb.KV_TIER_HOST, "redis": pb.KV_TIER_REDIS}


class KVEventHub:
    """Publishes KV event batches to subscribers; drains the engine on a timer."""

    def __init__(
        self,
        worker_id: str,
        drain: Callable[[], list[KVEvent]],
        snapshot: Callable[[], list[int]],
        *,
        tier_snapshot: Callable[[], list[int] | None] | None = None,
        interval: float = 0.05,
        max_backlog: int = 256,
    ) -> None:
        self.worker_id = worker_id
        self._drain = drain
        self._snapshot = snapshot
        self._tier_snapshot = tier_snapshot
        self.interval = interval
        self.max_backlog = max_backlog
        self._subscribers: set[asyncio.Queue[pb.KVEventBatch]] = set()
        self._sequence = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin draining the engine (call from the serving event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _next(self, events: list[pb.KVEvent]) -> pb.KVEventBatch:
        self._sequence += 1
        return pb.KVEventBatch(worker_id=self.worker_id, sequence=self._sequence, events=events)

    def _snapshot_batch(self) -> pb.KVEventBatch:
        events = [
            pb.KVEvent(
                kind=pb.KVEvent.KIND_SNAPSHOT, tier=pb.KV_TIER_DEVICE, block_hashes=self._snapshot()
            )
        ]
        tier = self._tier_snapshot() if self._tier_snapshot is not None else None
        if tier is not None:
            events.append(
                pb.KVEvent(kind=pb.KVEvent.KIND_SNAPSHOT, tier=pb.KV_TIER_REDIS, block_hashes=tier)
            )
        return self._next(events)

    def subscribe(self, snapshot: bool = True) -> asyncio.Queue[pb.KVEventBatch]:
        """A new subscriber queue, primed with a snapshot when asked."""
        queue: asyncio.Queue[pb.KVEventBatch] = asyncio.Queue(maxsize=self.max_backlog)
        if snapshot:
            queue.put_nowait(self._snapshot_batch())
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[pb.KVEventBatch]) -> None:
        self._subscribers.discard(queue)

    def publish(self, events: list[KVEvent]) -> None:
        """Send ``events`` to every subscriber (a full queue is reset to a snapshot)."""
        if not events or not self._subscribers:
            return
        batch = self._next(
            [
                pb.KVEvent(
                    kind=_KINDS[e.kind],
                    tier=_TIERS.get(e.tier, pb.KV_TIER_DEVICE),
                    block_hashes=e.block_hashes,
                )
                for e in events
            ]
        )
        for queue in list(self._subscribers):
            if queue.full():
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(self._snapshot_batch())
            else:
                queue.put_nowait(batch)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.publish(self._drain())
