"""The worker's gRPC `Worker` service: the engine behind the wire contract.

The router reaches every worker the same way, whether it is a Ray actor on a laptop or a pod
in a RayCluster: Submit streams token chunks, Abort stops a request, Load returns the
snapshot the scheduler reads, KVEvents streams block stored/removed events for the global
index (to every router that subscribes: each router replica keeps its own index). Drain sets
the draining state the worker itself holds and reports to every router in its heartbeats, so a
worker drained through one router replica is drained for all.

The servicer only maps these onto gRPC; the work is composed in: the conversions between wire
and engine types (`wire.py`), the streams of Submit and SubmitMany (`submit_streams.py`), KV
migration's Migrate and ReceiveKV (`migration_rpc.MigrationRPC`) and elastic expert
parallelism's ScaleExperts (`expert_scaling_rpc.ExpertScalingRPC`).

Bad input is refused with INVALID_ARGUMENT naming the field: first by the request contract
the router also enforces (`mainsail.spec.request_contract`), then by the engine; the
engine keeps serving everyone else. On SubmitMany a refusal is one chunk for that request
(finish_reason "error", error "INVALID_ARGUMENT: ..."), never the end of the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import grpc

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.spec.request_contract import FieldError
from mainsail.spec.router_identity import MAX_ROUTER_ID_CHARS, ROUTER_ID_METADATA
from mainsail.workers.engine import EngineInputError
from mainsail.workers.expert_scaling import ExpertScaling
from mainsail.workers.expert_scaling_rpc import ExpertScalingRPC
from mainsail.workers.kv_publisher import KVEventHub
from mainsail.workers.migration_rpc import MigrationRPC, Migrator
from mainsail.workers.submit_streams import Multiplexer, ServingEngine, coalesced
from mainsail.workers.wire import (
    RequestLimits,
    chunk_from_outputs,
    engine_request_from_proto,
    kv_cost_to_proto,
)

if TYPE_CHECKING:
    from mainsail.workers.tracing import RequestSpans, WorkerTracing


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
        self.expert_scaling = ExpertScalingRPC(experts)  # a sharded MoE engine's degree, load
        self.limits = limits
        self.migration = MigrationRPC(migrator, tracing)
        self.tracing = tracing  # None: tracing off, no span work at all
        self.engine = engine
        self.hub = hub
        self.max_num_seqs = max_num_seqs
        self.adapters = adapters
        self._clock = clock
        self._streams: set[Multiplexer] = set()  # open SubmitMany streams
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
        mux = Multiplexer(self.engine, self.migration, self.limits, origin, self.tracing)
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
            kv_cost=kv_cost_to_proto(m),
        )
        self.expert_scaling.fill(snapshot)
        return snapshot

    async def ScaleExperts(
        self, request: pb.ScaleExpertsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScaleExpertsReply:
        """Start a change of the expert-parallel degree (`expert_scaling_rpc.py`)."""
        return await self.expert_scaling.scale(request, context)

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
