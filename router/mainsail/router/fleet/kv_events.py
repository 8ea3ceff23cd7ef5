"""Feeds the global KV index from every registered worker's KV event stream.

One task per worker: on (re)connect the worker sends a snapshot that replaces what the index
knew of it; then stored/removed events. A worker that leaves is removed from the index, so
the index never routes to a ghost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.fleet.registry import WorkerEntry
from mainsail.router.fleet.transport import TransportError, WorkerTransport

log = logging.getLogger(__name__)

_TIERS = {pb.KV_TIER_DEVICE: "device", pb.KV_TIER_HOST: "host", pb.KV_TIER_REDIS: "redis"}


class KVEventSink(Protocol):
    """Where events go (the router's KV index; `kvindex.KVIndex` satisfies this)."""

    def replace_worker(self, worker_id: str, hashes: Sequence[int], tier: str) -> None: ...

    def apply_event(self, worker_id: str, kind: str, hashes: Sequence[int], tier: str) -> None: ...

    def remove_worker(self, worker_id: str) -> None: ...


class KVEventFeed:
    """Subscribes to workers' KV events and applies them to ``index``."""

    def __init__(
        self, index: KVEventSink, transport: WorkerTransport, retry_s: float = 1.0
    ) -> None:
        self.index = index
        self.transport = transport
        self.retry_s = retry_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._publishing: set[str] = set()
        self.batches = 0

    def publishes(self, worker_id: str) -> bool:
        """True once ``worker_id`` has delivered KV events (else the router approximates)."""
        return worker_id in self._publishing

    def on_add(self, entry: WorkerEntry) -> None:
        """Start following a worker (restart if it re-registered)."""
        self.on_remove(entry)
        self._tasks[entry.worker_id] = asyncio.get_running_loop().create_task(
            self._follow(entry.worker_id, entry.address)
        )

    def on_remove(self, entry: WorkerEntry) -> None:
        """Stop following a worker and forget its blocks."""
        self._publishing.discard(entry.worker_id)
        task = self._tasks.pop(entry.worker_id, None)
        if task is not None:
            task.cancel()
        self.index.remove_worker(entry.worker_id)

    async def _follow(self, worker_id: str, address: str) -> None:
        while True:
            try:
                async for batch in self.transport.kv_events(address):
                    self.apply(worker_id, batch)
            except TransportError as exc:
                log.debug("KV events from %s interrupted: %s", worker_id, exc)
            await asyncio.sleep(self.retry_s)

    def apply(self, worker_id: str, batch: pb.KVEventBatch) -> None:
        """Apply one batch of events from ``worker_id``."""
        self.batches += 1
        self._publishing.add(worker_id)
        for event in batch.events:
            tier = _TIERS.get(event.tier, "device")
            hashes = list(event.block_hashes)
            if event.kind == pb.KVEvent.KIND_SNAPSHOT:
                self.index.replace_worker(worker_id, hashes, tier)
            elif event.kind == pb.KVEvent.KIND_STORED:
                self.index.apply_event(worker_id, "stored", hashes, tier)
            elif event.kind == pb.KVEvent.KIND_REMOVED:
                self.index.apply_event(worker_id, "removed", hashes, tier)

    async def close(self) -> None:
        """Cancel every follower task."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
