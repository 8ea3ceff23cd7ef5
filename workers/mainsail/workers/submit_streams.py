"""Streams of the `Worker` service: engine outputs coalesced into chunks, and the requests of
one `SubmitMany` stream multiplexed.

Why a module of its own: this is the serving path's concurrency (a task per request, outputs
gathered per id and sent as one message for all that are ready) and is the same for `Submit`,
`SubmitMany` and the fake OpenAI backend; `service.py` only maps it onto gRPC.

On SubmitMany a refusal is one chunk for that request (finish_reason "error", error
"INVALID_ARGUMENT: ..."), never the end of the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Protocol

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.spec.request_contract import FieldError
from mainsail.workers.engine import (
    EngineInputError,
    EngineMetrics,
    EngineRequest,
    KVEvent,
    RequestOutput,
)
from mainsail.workers.migration_rpc import MigrationRPC
from mainsail.workers.wire import RequestLimits, chunk_from_outputs, engine_request_from_proto

if TYPE_CHECKING:
    from mainsail.workers.tracing import WorkerTracing

_PUBLISH_TIMEOUT_S = 5.0  # past it the decode worker recomputes what is missing
_REUSE_WAIT_S = 10.0


class ServingEngine(Protocol):
    """What the service needs of an engine: `AsyncEngine`, or `FakeEngine` for benchmarks."""

    def generate(self, req: EngineRequest) -> AsyncIterator[RequestOutput]: ...

    def abort(self, request_id: str) -> None: ...

    def metrics(self) -> EngineMetrics: ...

    def drain_kv_events(self) -> list[KVEvent]: ...

    async def flush_kv_tier(self, timeout: float) -> bool:
        """Wait until the KV blocks handed to the shared tier are stored; False if there is
        no tier or it did not finish in ``timeout`` seconds."""
        ...


_End = None  # marks the end of an engine stream in the ready queue
Ready = asyncio.Queue[RequestOutput | BaseException | None]


async def _pump(outputs: AsyncIterator[RequestOutput], ready: Ready) -> None:
    """Move an engine stream into ``ready`` as fast as the engine produces it."""
    try:
        async for out in outputs:
            ready.put_nowait(out)
        ready.put_nowait(_End)
    except Exception as exc:  # handed to the RPC, which raises it there
        ready.put_nowait(exc)


async def coalesced(
    outputs: AsyncIterator[RequestOutput],
) -> AsyncGenerator[list[RequestOutput], None]:
    """The engine's outputs in batches of those ready at once (never waiting for more).

    The RPC sends one message per batch: a consumer that keeps up sees one output per message,
    one that falls behind (or an engine that yields several outputs without pausing) costs
    one message for all that were ready. Closing this stream stops the engine stream.
    """
    ready: Ready = asyncio.Queue()
    pump = asyncio.get_running_loop().create_task(_pump(outputs, ready))
    try:
        while True:
            item = await ready.get()
            batch: list[RequestOutput] = []
            while True:
                if item is _End:
                    if batch:
                        yield batch
                    return
                if isinstance(item, BaseException):
                    if batch:
                        yield batch
                    raise item
                batch.append(item)
                if item.finished or ready.empty():
                    break
                item = ready.get_nowait()
            yield batch
            if batch[-1].finished:
                return
    finally:
        if not pump.done():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


class Multiplexer:
    """The requests of one SubmitMany stream: a task per request, outputs gathered per id."""

    def __init__(
        self,
        engine: ServingEngine,
        migration: MigrationRPC,
        limits: RequestLimits | None = None,
        origin: str = "",
        tracing: WorkerTracing | None = None,
    ) -> None:
        self.origin = origin  # the id of the router that opened the stream ("" unknown)
        self.engine = engine
        self.migration = migration
        self.limits = limits
        self.tracing = tracing
        self.ready: dict[str, list[RequestOutput]] = {}
        self.failed: dict[str, str] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.wake = asyncio.Event()

    async def read(self, batches: AsyncIterator[pb.WorkerRequestBatch]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for batch in batches:
                for request in batch.requests:
                    rid = request.request_id
                    previous = self.tasks.get(rid)
                    if previous is not None:
                        # The same id again right after an abort (a KV move given up, then
                        # recomputed here): give the aborted one a moment to end.
                        await asyncio.wait({previous}, timeout=_REUSE_WAIT_S)
                    if rid in self.tasks:
                        self._fail(rid, f"INVALID_ARGUMENT: request id {rid!r} is already in use")
                        continue
                    if self.limits is not None:
                        try:
                            self.limits.check(request)
                        except FieldError as exc:
                            self._fail(rid, f"INVALID_ARGUMENT: {exc.param}: {exc.message}")
                            continue
                    self.tasks[rid] = loop.create_task(self._run(request))
        finally:
            self.wake.set()

    async def _run(self, request: pb.WorkerRequest) -> None:
        rid = request.request_id
        spans = self.tracing.begin(request) if self.tracing is not None else None
        try:
            if request.adopt:
                outputs = self.migration.adopted(rid, engine_request_from_proto(request))
            else:
                outputs = self.engine.generate(engine_request_from_proto(request))
            async for out in outputs:
                if spans is not None and spans.wants(out):
                    spans.output(out)
                if out.finished and request.kv_publish:
                    # Disaggregated prefill: the decode worker fetches these blocks next.
                    await self.engine.flush_kv_tier(_PUBLISH_TIMEOUT_S)
                pending = self.ready.get(rid)
                if pending is None:
                    self.ready[rid] = [out]
                    self.wake.set()
                else:
                    pending.append(out)
        except EngineInputError as exc:
            self._fail(rid, f"INVALID_ARGUMENT: {exc}")
        except Exception as exc:  # the engine failed this request; others carry on
            self._fail(rid, f"INTERNAL: {type(exc).__name__}: {exc}")
        finally:
            if spans is not None:
                spans.end(error=self.failed.get(rid, ""))
            self.tasks.pop(rid, None)
            self.wake.set()

    def _fail(self, rid: str, message: str) -> None:
        self.failed[rid] = message
        self.ready.setdefault(rid, [])
        self.wake.set()

    def chunk(self, rid: str, outs: list[RequestOutput]) -> pb.TokenChunk:
        error = self.failed.pop(rid, None)
        if error is None:
            return chunk_from_outputs(outs)
        chunk = chunk_from_outputs(outs) if outs else pb.TokenChunk(request_id=rid)
        chunk.finish_reason = "error"
        chunk.error = error
        return chunk
