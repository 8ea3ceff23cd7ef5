"""Requests multiplexed over one `Worker.SubmitMany` stream, against the real `WorkerService`
over loopback gRPC: demultiplexing, coalescing of ready tokens, refusals, aborts and a
broken stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

import grpc
import pytest

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.router.fleet.transport import GrpcTransport, TransportError
from mainsail.workers.engine import EngineInputError, EngineRequest, RequestOutput
from mainsail.workers.fake_engine import FakeEngine
from mainsail.workers.kv_publisher import KVEventHub
from mainsail.workers.service import WorkerService
from mainsail.workers.submit_streams import coalesced
from mainsail.workers.wire import chunk_from_outputs

pytestmark = pytest.mark.unit


class RecordingEngine(FakeEngine):
    """FakeEngine that refuses empty prompts (as the real engine does) and records aborts."""

    def __init__(self, token_delay: float = 0.0) -> None:
        super().__init__(token_delay=token_delay)
        self.aborted: list[str] = []
        self._abort_seen = asyncio.Event()

    async def until_aborted(self, request_id: str) -> None:
        """Until the worker has aborted ``request_id`` (bounded: 5 s)."""
        async with asyncio.timeout(5):
            while request_id not in self.aborted:
                self._abort_seen.clear()
                await self._abort_seen.wait()

    async def generate(self, req: EngineRequest) -> AsyncIterator[RequestOutput]:
        if req.prompt_token_ids == [0]:
            raise EngineInputError("prompt refused")
        async for out in super().generate(req):
            yield out

    def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        self._abort_seen.set()


@asynccontextmanager
async def worker(engine: FakeEngine, port: int = 0) -> AsyncIterator[tuple[grpc.aio.Server, str]]:
    hub = KVEventHub("w", engine.drain_kv_events, engine.kv_snapshot)
    server = grpc.aio.server()
    pb_grpc.add_WorkerServicer_to_server(WorkerService("w", engine, hub, max_num_seqs=64), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield server, f"127.0.0.1:{bound}"
    finally:
        await server.stop(grace=None)


def request(rid: str, n: int, prompt: tuple[int, ...] = (5, 6, 7)) -> pb.WorkerRequest:
    return pb.WorkerRequest(
        request_id=rid, prompt_token_ids=prompt, sampling=pb.SamplingParams(max_tokens=n)
    )


async def collect(stream: AsyncIterator[pb.TokenChunk]) -> list[pb.TokenChunk]:
    return [chunk async for chunk in stream]


async def test_concurrent_requests_are_demultiplexed_and_ready_tokens_coalesced() -> None:
    transport = GrpcTransport()
    async with worker(RecordingEngine()) as (_, address):
        results = await asyncio.gather(
            *(collect(transport.submit(address, request(f"r{i}", 3 + i))) for i in range(8))
        )
        await transport.close()
    for i, chunks in enumerate(results):
        # The fake engine has every token ready at once: one message per request.
        assert len(chunks) == 1
        (chunk,) = chunks
        assert chunk.request_id == f"r{i}"
        assert chunk.text == "".join(f" w{k}" for k in range(3 + i))
        assert len(chunk.token_ids) == 3 + i
        assert chunk.finish_reason == "length" and chunk.usage.completion_tokens == 3 + i


async def test_slow_tokens_stream_one_by_one() -> None:
    transport = GrpcTransport()
    async with worker(RecordingEngine(token_delay=0.01)) as (_, address):
        chunks = await collect(transport.submit(address, request("slow", 4)))
        await transport.close()
    assert [c.text for c in chunks] == [" w0", " w1", " w2", " w3"]


async def test_refusal_before_first_token_is_a_transport_error() -> None:
    transport = GrpcTransport()
    async with worker(RecordingEngine()) as (_, address):
        with pytest.raises(TransportError, match="INVALID_ARGUMENT: prompt refused"):
            await collect(transport.submit(address, request("bad", 2, prompt=(0,))))
        # The stream carries on for everyone else.
        assert len(await collect(transport.submit(address, request("good", 2)))) == 1
        await transport.close()


async def test_stopping_early_aborts_at_the_worker() -> None:
    engine = RecordingEngine(token_delay=0.02)
    transport = GrpcTransport()
    async with worker(engine) as (_, address):
        async with aclosing(transport.submit(address, request("early", 50))) as stream:
            first = await anext(stream)
        assert first.text == " w0"
        await engine.until_aborted("early")
        await transport.close()
    assert engine.aborted == ["early"]


async def test_broken_stream_fails_open_requests_and_reconnects() -> None:
    transport = GrpcTransport()
    async with worker(RecordingEngine(token_delay=0.05)) as (server, address):
        stream = transport.submit(address, request("cut", 50))
        assert (await anext(stream)).text == " w0"
        await server.stop(grace=None)
        with pytest.raises(TransportError):
            await collect(stream)
    port = int(address.rsplit(":", 1)[1])
    async with worker(RecordingEngine(), port=port):
        chunks = await collect(transport.submit(address, request("again", 2)))
        await transport.close()
    assert chunks[-1].finish_reason == "length"


async def test_coalesced_batches_what_is_ready_and_merges_logprobs() -> None:
    def out(i: int, last: bool) -> RequestOutput:
        return RequestOutput(
            request_id="x",
            new_token_ids=[i],
            new_text=f"<{i}>",
            finished=last,
            finish_reason="stop" if last else None,
            prompt_tokens=3,
            completion_tokens=i + 1,
            cached_tokens=1,
            logprobs=[{i: -0.5, 99: -1.0}],
        )

    async def outputs() -> AsyncIterator[RequestOutput]:
        yield out(0, False)
        yield out(1, False)
        await asyncio.sleep(0.01)
        yield out(2, True)

    batches = [batch async for batch in coalesced(outputs())]
    assert [[o.new_token_ids[0] for o in b] for b in batches] == [[0, 1], [2]]
    chunk = chunk_from_outputs([*batches[0], *batches[1]])
    assert chunk.text == "<0><1><2>" and list(chunk.token_ids) == [0, 1, 2]
    assert [lp.token_id for lp in chunk.logprobs] == [0, 1, 2]
    assert chunk.logprobs[0].logprob == -0.5 and list(chunk.logprobs[0].top_token_ids) == [0, 99]
    assert chunk.finish_reason == "stop" and chunk.usage.completion_tokens == 3


async def test_a_consumer_that_stops_reading_cannot_grow_the_router() -> None:
    """Past `max_queued` chunks waiting, the request ends with RESOURCE_EXHAUSTED and is
    aborted at the worker; the stream and other requests carry on."""
    from mainsail.router.fleet.worker_stream import WorkerStream

    engine = RecordingEngine(token_delay=0.002)
    async with worker(engine) as (_, address), grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.WorkerStub(channel)

        async def abort(rid: str) -> None:
            await stub.Abort(pb.AbortRequest(request_id=rid))

        stream = WorkerStream(lambda: stub.SubmitMany(), abort, max_queued=8)
        slow = stream.submit(request("slow", 400))
        await anext(slow)  # then stop reading
        for _ in range(500):
            if stream.overflowed:
                break
            await asyncio.sleep(0.01)
        assert stream.overflowed == 1
        rest = [chunk async for chunk in slow]
        assert len(rest) <= 9
        assert rest[-1].finish_reason == "error" and "RESOURCE_EXHAUSTED" in rest[-1].error
        await engine.until_aborted("slow")
        other = await collect(stream.submit(request("other", 3)))
        assert other[-1].finish_reason == "length"
        stream.close()
