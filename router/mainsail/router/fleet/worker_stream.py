"""One long-lived `Worker.SubmitMany` stream carrying every request the router sends a worker.

Why: a gRPC call per request (stream set-up, metadata, grpc.aio's per-call objects and tasks)
cost the router ~0.4 ms of CPU and ~0.4 ms of latency per request on the benchmark machine;
a message on an open stream costs a fraction of that. Requests go out in order through one
writer task, all that are waiting in one message; chunks come back (batched by the worker)
through one reader task and are handed to each request's queue by `request_id`. A request
ends with the chunk that has a finish reason. When the stream breaks, every open request
fails with `TransportError` and the next `submit` opens a new stream. A request whose
consumer stops early is aborted at the worker (`Worker.Abort`).

Each request's queue of chunks is bounded (`max_queued`): a consumer that stops reading (a
client that does not read its stream) while the worker keeps generating would otherwise grow
the router's memory with every token; past the bound the request ends with an error chunk
(`RESOURCE_EXHAUSTED`) and is aborted at the worker — that request's error only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any

import grpc

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.errors import TransportError, WorkerRefused

Item = pb.TokenChunk | TransportError
Opener = Callable[[], Any]  # the stub's SubmitMany: returns a grpc.aio StreamStreamCall
MAX_QUEUED_CHUNKS = 1024
"""Chunks one request may have waiting for its consumer before it is ended."""


class WorkerStream:
    """Requests multiplexed over one SubmitMany call; ``abort`` stops one at the worker."""

    def __init__(
        self,
        open_call: Opener,
        abort: Callable[[str], Coroutine[Any, Any, None]],
        max_queued: int = MAX_QUEUED_CHUNKS,
    ) -> None:
        self.max_queued = max_queued
        self.overflowed = 0  # requests ended because their consumer fell behind
        self._call = open_call()
        self._abort = abort
        self._open: dict[str, asyncio.Queue[Item]] = {}
        self._outbox: asyncio.Queue[pb.WorkerRequest] = asyncio.Queue()
        self._background: set[asyncio.Task[None]] = set()
        self.closed = False
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write())
        self._reader = loop.create_task(self._read())

    def submit(self, request: pb.WorkerRequest) -> AsyncGenerator[pb.TokenChunk, None]:
        """Send ``request`` now; the returned stream yields its chunks and raises
        `WorkerRefused` if the worker refuses it before its first token (a chunk with
        finish_reason "error" and no tokens: this request's error, the stream is fine) or
        `TransportError` if the stream breaks (the worker's failure)."""
        rid = request.request_id
        queue: asyncio.Queue[Item] = asyncio.Queue()  # a request's chunks, in order
        if self.closed:
            queue.put_nowait(TransportError("UNAVAILABLE: the worker stream is closed"))
        elif rid in self._open:
            queue.put_nowait(WorkerRefused(f"INVALID_ARGUMENT: request id {rid!r} is open"))
        else:
            self._open[rid] = queue
            self._outbox.put_nowait(request)
        return self._chunks(rid, queue)

    async def _chunks(
        self, rid: str, queue: asyncio.Queue[Item]
    ) -> AsyncGenerator[pb.TokenChunk, None]:
        finished = False
        first = True
        try:
            while True:
                item = await queue.get()
                if isinstance(item, TransportError):
                    finished = True
                    raise item
                if item.finish_reason:
                    finished = True
                    if first and item.finish_reason == "error" and not item.token_ids:
                        raise WorkerRefused(item.error or "INTERNAL: the worker refused it")
                first = False
                yield item
                if finished:
                    return
        finally:
            if self._open.get(rid) is queue:
                del self._open[rid]
            if not finished and not self.closed:
                task = asyncio.get_running_loop().create_task(self._abort(rid))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _write(self) -> None:
        try:
            while True:
                requests = [await self._outbox.get()]
                while not self._outbox.empty():
                    requests.append(self._outbox.get_nowait())
                await self._call.write(pb.WorkerRequestBatch(requests=requests))
        except grpc.aio.AioRpcError as exc:
            self._fail(f"{exc.code().name}: {exc.details()}")
        except (asyncio.InvalidStateError, RuntimeError) as exc:
            self._fail(f"UNAVAILABLE: {exc}")

    async def _read(self) -> None:
        reason = "UNAVAILABLE: the worker closed the stream"
        try:
            async for batch in self._call:
                for chunk in batch.chunks:
                    rid = chunk.request_id
                    done = bool(chunk.finish_reason)
                    queue = self._open.pop(rid, None) if done else self._open.get(rid)
                    if queue is None:
                        continue
                    if not done and queue.qsize() >= self.max_queued:
                        self._overflow(rid, queue)
                        continue
                    queue.put_nowait(chunk)
        except grpc.aio.AioRpcError as exc:
            reason = f"{exc.code().name}: {exc.details()}"
        self._fail(reason)

    def _overflow(self, rid: str, queue: asyncio.Queue[Item]) -> None:
        """End one request whose consumer stopped reading; abort it at the worker."""
        del self._open[rid]
        self.overflowed += 1
        queue.put_nowait(
            pb.TokenChunk(
                request_id=rid,
                finish_reason="error",
                error=f"RESOURCE_EXHAUSTED: more than {self.max_queued} chunks waiting for a "
                "consumer that is not reading",
            )
        )
        task = asyncio.get_running_loop().create_task(self._abort(rid))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _fail(self, reason: str) -> None:
        """The stream is gone: every open request fails; the next submit opens a new one."""
        self.closed = True
        error = TransportError(reason)
        for queue in self._open.values():
            queue.put_nowait(error)
        self._open.clear()
        self._call.cancel()
        self._writer.cancel()

    def close(self) -> None:
        """Cancel the stream (the worker stops its requests) and the background tasks."""
        if not self.closed:
            self._fail("UNAVAILABLE: the router closed the worker stream")
        self._reader.cancel()
        for task in list(self._background):
            task.cancel()
        with contextlib.suppress(Exception):
            self._call.cancel()
