"""The worker's gRPC `Worker` service: the engine behind the wire contract.

The router reaches every worker the same way, whether it is a Ray actor on a laptop or a pod
in a RayCluster: Submit streams token chunks, Abort stops a request, Load returns the
snapshot the scheduler reads, KVEvents streams block stored/removed events for the global
index. Bad input is refused with INVALID_ARGUMENT and the engine's message; the engine keeps
serving everyone else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import grpc

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.workers.engine import (
    EngineInputError,
    EngineMetrics,
    EngineRequest,
    KVEvent,
    RequestOutput,
    SamplingParams,
)
from mainsail.workers.kv_publisher import KVEventHub


class ServingEngine(Protocol):
    """What the service needs of an engine: `AsyncEngine`, or `FakeEngine` for benchmarks."""

    def generate(self, req: EngineRequest) -> AsyncIterator[RequestOutput]: ...

    def abort(self, request_id: str) -> None: ...

    def metrics(self) -> EngineMetrics: ...

    def drain_kv_events(self) -> list[KVEvent]: ...


def sampling_from_proto(s: pb.SamplingParams) -> SamplingParams:
    """Engine sampling parameters from the wire (absent fields take engine defaults)."""
    return SamplingParams(
        temperature=s.temperature if s.HasField("temperature") else 1.0,
        top_p=s.top_p if s.HasField("top_p") else 1.0,
        top_k=max(0, s.top_k),
        seed=s.seed if s.HasField("seed") else None,
        max_tokens=s.max_tokens or 16,
        stop=tuple(s.stop),
        stop_token_ids=tuple(s.stop_token_ids),
        logprobs=s.logprobs or None,
        ignore_eos=s.ignore_eos,
    )


def chunk_from_output(out: RequestOutput) -> pb.TokenChunk:
    """One engine output as a wire chunk; usage is filled on the last one."""
    chunk = pb.TokenChunk(
        request_id=out.request_id,
        token_ids=out.new_token_ids,
        text=out.new_text,
        finish_reason=out.finish_reason or "" if out.finished else "",
        error=out.error or "",
    )
    if out.logprobs:
        for token_id, top in zip(out.new_token_ids, out.logprobs, strict=False):
            ranked = sorted(top.items(), key=lambda kv: kv[1], reverse=True)
            chunk.logprobs.add(
                token_id=token_id,
                logprob=top.get(token_id, ranked[0][1] if ranked else 0.0),
                top_token_ids=[t for t, _ in ranked],
                top_logprobs=[lp for _, lp in ranked],
            )
    if out.finished:
        chunk.usage.prompt_tokens = out.prompt_tokens
        chunk.usage.completion_tokens = out.completion_tokens
        chunk.usage.cached_tokens = out.cached_tokens
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
    ) -> None:
        self.worker_id = worker_id
        self.engine = engine
        self.hub = hub
        self.max_num_seqs = max_num_seqs
        self.adapters = adapters
        self._clock = clock

    async def Submit(
        self, request: pb.WorkerRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TokenChunk]:
        try:
            engine_request = EngineRequest(
                request_id=request.request_id,
                prompt_token_ids=list(request.prompt_token_ids),
                sampling=sampling_from_proto(request.sampling),
                priority=request.priority,
                adapter=request.adapter or None,
            )
            outputs = self.engine.generate(engine_request)
            async for out in outputs:
                yield chunk_from_output(out)
        except EngineInputError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

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
        return pb.LoadSnapshot(
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
        )

    async def Migrate(
        self, request: pb.MigrateRequest, context: grpc.aio.ServicerContext
    ) -> pb.MigrateReply:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "live migration is not available yet")
        return pb.MigrateReply(accepted=False)

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
