"""The worker's gRPC `Worker` service: the engine behind the wire contract.

The router reaches every worker the same way, whether it is a Ray actor on a laptop or a pod
in a RayCluster: Submit streams token chunks, Abort stops a request, Load returns the
snapshot the scheduler reads, KVEvents streams block stored/removed events for the global
index (to every router that subscribes: each router replica keeps its own index). Drain sets
the draining state the worker itself holds and reports to every router in its heartbeats, so a
worker drained through one router replica is drained for all. Migrate and ReceiveKV (KV
migration) are delegated to the composed `migration_rpc.MigrationRPC`.

Bad input is refused with INVALID_ARGUMENT naming the field: first by the request contract
the router also enforces (`mainsail.spec.request_contract`), then by the engine; the
engine keeps serving everyone else. On SubmitMany a refusal is one chunk for that request
(finish_reason "error", error "INVALID_ARGUMENT: ..."), never the end of the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import grpc

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.spec.request_contract import DEFAULT_MAX_TOKENS, FieldError, check_worker_request
from mainsail.spec.router_identity import MAX_ROUTER_ID_CHARS, ROUTER_ID_METADATA
from mainsail.workers.engine import (
    EngineInputError,
    EngineMetrics,
    EngineRequest,
    KVEvent,
    RequestOutput,
    SamplingParams,
)
from mainsail.workers.expert_scaling import ExpertScaling, ScaleRefused
from mainsail.workers.kv_publisher import KVEventHub
from mainsail.workers.migration_rpc import MigrationRPC, Migrator

if TYPE_CHECKING:
    from mainsail.workers.tracing import RequestSpans, WorkerTracing

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


def sampling_from_proto(s: pb.SamplingParams) -> SamplingParams:
    """Engine sampling parameters from the wire (absent fields take engine defaults)."""
    return SamplingParams(
        temperature=s.temperature if s.HasField("temperature") else 1.0,
        top_p=s.top_p if s.HasField("top_p") else 1.0,
        top_k=max(0, s.top_k),
        seed=s.seed if s.HasField("seed") else None,
        max_tokens=s.max_tokens or DEFAULT_MAX_TOKENS,
        stop=tuple(s.stop),
        stop_token_ids=tuple(s.stop_token_ids),
        logprobs=s.logprobs or None,
        ignore_eos=s.ignore_eos,
    )


def engine_request_from_proto(request: pb.WorkerRequest, now: float | None = None) -> EngineRequest:
    """The engine's request for a wire `WorkerRequest` (both Submit and SubmitMany). Its
    unix-time deadline becomes seconds from now (``now``: unix time, default the wall clock),
    so the engine compares deadlines on its own clock."""
    wall = time.time() if now is None else now
    return EngineRequest(
        request_id=request.request_id,
        prompt_token_ids=list(request.prompt_token_ids),
        sampling=sampling_from_proto(request.sampling),
        priority=request.priority,
        adapter=request.adapter or None,
        sampled_before=request.sampled_before,
        cache_namespace=request.cache_namespace or None,
        ttft_budget_s=request.ttft_deadline - wall if request.ttft_deadline else None,
        tpot_s=request.tpot_target or None,
    )


def chunk_from_outputs(outs: Sequence[RequestOutput]) -> pb.TokenChunk:
    """Outputs that were ready together as one wire chunk: token ids, text and logprobs
    concatenated in order; finish reason, error and usage from the last output."""
    last = outs[-1]
    chunk = pb.TokenChunk(
        request_id=last.request_id,
        finish_reason=last.finish_reason or "" if last.finished else "",
        error=last.error or "",
    )
    if len(outs) == 1:
        chunk.token_ids.extend(last.new_token_ids)
        chunk.text = last.new_text
    else:
        for out in outs:
            chunk.token_ids.extend(out.new_token_ids)
        chunk.text = "".join(out.new_text for out in outs)
    for out in outs:
        if out.logprobs:
            _add_logprobs(chunk, out)
    if last.finished:
        chunk.usage.prompt_tokens = last.prompt_tokens
        chunk.usage.completion_tokens = last.completion_tokens
        chunk.usage.cached_tokens = last.cached_tokens
    return chunk


def _add_logprobs(chunk: pb.TokenChunk, out: RequestOutput) -> None:
    for token_id, top in zip(out.new_token_ids, out.logprobs or (), strict=False):
        ranked = sorted(top.items(), key=lambda kv: kv[1], reverse=True)
        chunk.logprobs.add(
            token_id=token_id,
            logprob=top.get(token_id, ranked[0][1] if ranked else 0.0),
            top_token_ids=[t for t, _ in ranked],
            top_logprobs=[lp for _, lp in ranked],
        )


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


@dataclass(frozen=True)
class RequestLimits:
    """What the worker checks every request against before the engine sees it."""

    vocab_size: int
    max_model_len: int

    def check(self, request: pb.WorkerRequest) -> None:
        """Raise `FieldError` for a request outside the shared contract."""
        check_worker_request(request, vocab_size=self.vocab_size, max_model_len=self.max_model_len)


class _Multiplexer:
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


class WorkerService(pb_grpc.WorkerServicer):
    """Serves one engine over gRPC."""

    def __init__(
        self,
        worker_id: str,
        engine: ServingEngine,
        hub: KVEventHub,
        *,
        max_num_seqs: int,
        adapters: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
        limits: RequestLimits | None = None,
        migrator: Migrator | None = None,
        tracing: WorkerTracing | None = None,
        experts: ExpertScaling | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.experts = experts  # a sharded mixture-of-experts engine's degree and load
        self.limits = limits
        self.migration = MigrationRPC(migrator, tracing)
        self.tracing = tracing  # None: tracing off, no span work at all
        self.engine = engine
        self.hub = hub
        self.max_num_seqs = max_num_seqs
        self.adapters = adapters
        self._clock = clock
        self._streams: set[_Multiplexer] = set()  # open SubmitMany streams
        self.draining = False
        self.drain_epoch = 0

    def in_flight_from(self, router_id: str) -> int:
        """Requests in flight here that arrived from the router ``router_id``."""
        return sum(len(m.tasks) for m in self._streams if m.origin == router_id)

    async def Submit(
        self, request: pb.WorkerRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TokenChunk]:
        spans: RequestSpans | None = None
        try:
            if self.limits is not None:
                self.limits.check(request)
            if self.tracing is not None:
                spans = self.tracing.begin(request, context.invocation_metadata() or ())
            if request.adopt:
                announced = engine_request_from_proto(request)
                outputs = self.migration.adopted(request.request_id, announced)
            else:
                outputs = self.engine.generate(engine_request_from_proto(request))
            batches = coalesced(outputs)
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    if spans is not None:
                        spans.output(batch[0])
                        spans.output(batch[-1])
                    yield chunk_from_outputs(batch)
        except FieldError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc.param}: {exc.message}")
        except EngineInputError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            if spans is not None:
                spans.end()

    async def SubmitMany(
        self,
        request_iterator: AsyncIterator[pb.WorkerRequestBatch],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.TokenChunkBatch]:
        """Every request on one stream; what is ready for all of them goes out as one message,
        each request's ready outputs as one chunk."""
        origin = ""
        for key, value in context.invocation_metadata() or ():
            if key == ROUTER_ID_METADATA:
                origin = str(value)[:MAX_ROUTER_ID_CHARS]
        mux = _Multiplexer(self.engine, self.migration, self.limits, origin, self.tracing)
        self._streams.add(mux)
        reader = asyncio.get_running_loop().create_task(mux.read(request_iterator))
        try:
            while True:
                await mux.wake.wait()
                mux.wake.clear()
                if mux.ready:
                    ready, mux.ready = mux.ready, {}
                    yield pb.TokenChunkBatch(
                        chunks=[mux.chunk(rid, outs) for rid, outs in ready.items()]
                    )
                if reader.done() and not mux.tasks and not mux.ready:
                    return
        finally:
            self._streams.discard(mux)
            reader.cancel()
            for task in list(mux.tasks.values()):
                task.cancel()

    async def Abort(
        self, request: pb.AbortRequest, context: grpc.aio.ServicerContext
    ) -> pb.AbortReply:
        self.engine.abort(request.request_id)
        return pb.AbortReply(found=True)

    async def Health(
        self, request: pb.HealthRequest, context: grpc.aio.ServicerContext
    ) -> pb.HealthReply:
        return pb.HealthReply(serving=True, detail="ok")

    async def Load(
        self, request: pb.LoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadSnapshot:
        return self.load_snapshot()

    def load_snapshot(self) -> pb.LoadSnapshot:
        """The metrics the router schedules on (docs/protocol.md)."""
        m = self.engine.metrics()
        snapshot = pb.LoadSnapshot(
            worker_id=self.worker_id,
            running=m.running,
            waiting=m.waiting,
            kv_blocks_used=m.kv_blocks_used,
            kv_blocks_total=m.kv_blocks_total,
            prefix_hit_tokens=m.prefix_hit_tokens,
            prompt_tokens_total=m.prompt_tokens_total,
            generation_tokens_total=m.generation_tokens_total,
            step_time_ms=m.step_time_ms_ema,
            max_num_seqs=self.max_num_seqs,
            adapters=list(self.adapters),
            preemptions=m.preemptions,
            requests_finished=m.num_requests_finished,
            pending_prefill_tokens=m.pending_prefill_tokens,
            timestamp=self._clock(),
            draining=self.draining,
            drain_epoch=self.drain_epoch,
            kv_cost=_kv_cost(m),
        )
        if self.experts is not None:
            self.experts.fill(snapshot)
        return snapshot

    async def ScaleExperts(
        self, request: pb.ScaleExpertsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScaleExpertsReply:
        """Starts a change of the expert-parallel degree (`expert_scaling.py`); returns at
        once, the heartbeats report the switch."""
        if self.experts is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this worker does not run a mixture-of-experts model in expert-parallel ranks",
            )
            raise AssertionError("unreachable")  # context.abort raises
        try:
            current, target = await self.experts.scale(request.expert_parallel)
        except ScaleRefused as exc:
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
            raise AssertionError("unreachable") from exc
        return pb.ScaleExpertsReply(expert_parallel=current, target=target)

    async def Drain(
        self, request: pb.DrainRequest, context: grpc.aio.ServicerContext
    ) -> pb.DrainReply:
        """Holds the draining state here, so every router hears it in this worker's next
        heartbeat, whichever router an operator asked."""
        if request.drain != self.draining:
            self.draining = request.drain
            self.drain_epoch += 1
        return pb.DrainReply(draining=self.draining, drain_epoch=self.drain_epoch)

    async def Migrate(
        self, request: pb.MigrateRequest, context: grpc.aio.ServicerContext
    ) -> pb.MigrateReply:
        """Move a running request with its KV to another worker (`migration_rpc.py`)."""
        return await self.migration.migrate(request, context)

    async def ReceiveKV(
        self, request_iterator: AsyncIterator[pb.KVStage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.KVStageAck]:
        """The target side of `Migrate` (`migration_rpc.py`)."""
        async for ack in self.migration.receive_kv(request_iterator, context):
            yield ack

    async def KVEvents(
        self, request: pb.KVEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.KVEventBatch]:
        queue = self.hub.subscribe(snapshot=request.snapshot)
        try:
            while True:
                batch = await queue.get()
                yield batch
        except asyncio.CancelledError:
            raise
        finally:
            self.hub.unsubscribe(queue)


def _kv_cost(m: EngineMetrics) -> pb.KVCost:
    """The engine's cost model as the router reads it (`LoadSnapshot.kv_cost`)."""
    cost = m.kv_cost
    if cost is None:
        return pb.KVCost()
    return pb.KVCost(
        prefill_s_per_token=cost.prefill_s_per_token,
        tier_id=m.kv_tier_id,
        fetch_policy=m.kv_fetch_policy,
        tier_rtt_s=cost.rtt_s,
        tier_bandwidth_bps=cost.bandwidth_bps,
        block_bytes=cost.block_bytes,
    )
