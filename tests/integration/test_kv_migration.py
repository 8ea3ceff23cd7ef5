"""Live migration that moves KV (`Worker.Migrate` / `ReceiveKV`), with a real router, real
workers and the real engine on the tiny checkpoint, credentials on (worker-plane token).

A request moved mid-stream continues token-identically on the target, for greedy and for
seeded sampling; the source killed at every point of a migration makes the router fall back
to recompute, still identical; a worker serving other weights refuses the blocks, and the
source then simply keeps the request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from support.fleet import Fleet, fleet

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.spec.engine_settings import EngineSettings
from mainsail.workers.host import WorkerHost

pytestmark = pytest.mark.integration

MAX_LEN = 1024
GREEDY = pb.SamplingParams(max_tokens=500, temperature=0.0, ignore_eos=True)
SEEDED = pb.SamplingParams(max_tokens=500, temperature=0.8, top_p=0.95, seed=11, ignore_eos=True)
PROMPT = "A long voyage begins at dawn, and the crew " * 8  # a few KV blocks of context


def _request(sampling: pb.SamplingParams) -> pb.GenerateRequest:
    return pb.GenerateRequest(model="tiny", prompt=PROMPT, sampling=sampling)


@pytest.fixture
async def two(tiny_model_dir: Path) -> AsyncIterator[Fleet]:
    engine = EngineSettings(max_model_len=MAX_LEN)
    async with fleet(tiny_model_dir, workers=2, engine=engine, max_model_len=MAX_LEN) as f:
        yield f


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
async def test_a_request_moved_with_its_kv_continues_token_identically(
    two: Fleet, sampling: pb.SamplingParams
) -> None:
    reference, _, _ = await two.generate(_request(sampling))
    tokens, workers, last = await two.generate(_request(sampling), move_after=20)
    assert last.finish_reason == "length" and not last.error
    assert len(set(workers)) == 2, "the stream finished before the move"
    assert tokens == reference
    assert last.usage.completion_tokens == sampling.max_tokens
    assert two.counter("kv_migrations") == 1
    assert two.counter("kv_migration_failures") == 0
    # The source's pause is recorded (one move); it is a part of the whole move's time.
    assert two.counter("kv_migration_pause_seconds", "_count") == 1
    assert two.counter("kv_migration_seconds", "_count") == 1
    pause = two.counter("kv_migration_pause_seconds", "_sum")
    assert 0 < pause <= two.counter("kv_migration_seconds", "_sum")


def _host(f: Fleet, worker_id: str) -> WorkerHost:
    return next(h for h in f.workers if h.spec.worker_id == worker_id)


@pytest.mark.parametrize("point", ["stage 1", "stage 2", "paused", "adopted"])
async def test_the_source_killed_during_a_kv_move_falls_back_to_recompute(
    two: Fleet, point: str
) -> None:
    """The source's gRPC server dies at ``point`` of the migration (before stage 1 or 2 is
    sent, once the request is paused, once the target adopted it): the router continues the
    request on the other worker by recompute, and the client sees the undisturbed tokens."""
    reference, _, _ = await two.generate(_request(SEEDED))
    killed: list[str] = []
    for host in two.workers:
        migrator = host.migrator
        assert migrator is not None
        migrator.max_stages, migrator.final_blocks = 3, -1  # stage 1, stage 2, final

        async def die(at: str, host: WorkerHost = host) -> None:
            if at == point:
                killed.append(host.spec.worker_id)
                server = host._server
                assert server is not None
                asyncio.get_running_loop().create_task(server.stop(None))
                await asyncio.sleep(30)  # cancelled with the server's calls

        migrator.stage_hook = die
    tokens, workers, last = await two.generate(_request(SEEDED), move_after=20)
    assert killed == [workers[0]]
    assert last.finish_reason == "length" and not last.error, last.error
    assert workers[-1] != workers[0]
    assert tokens == reference
    assert two.counter("resumes") == 1
    assert two.counter("kv_migrations") == 0


async def test_blocks_of_another_model_are_refused_and_the_source_keeps_the_request(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A target serving other weights (same shapes, same KV hashing: only the checkpoint
    digest differs) refuses the blocks; Migrate answers accepted=false naming the mismatch
    and the request carries on at the source, its tokens unchanged."""
    from mainsail.workers.checkpoint import ensure_checkpoint

    other_dir = ensure_checkpoint("llama", seed=7)
    engine = EngineSettings(max_model_len=MAX_LEN)
    async with fleet(tiny_model_dir, workers=1, engine=engine, max_model_len=MAX_LEN) as f:
        reference, _, _ = await f.generate(_request(GREEDY))
        source = f.workers[0]
        from mainsail.workers.worker_spec import WorkerSpec

        other = WorkerHost(
            WorkerSpec(worker_id="other", model_name="tiny", model_dir=other_dir, engine=engine),
            source.credential,
        )
        await other.start()
        try:
            tokens: list[int] = []
            reply = pb.MigrateReply()
            metadata = source.credential.metadata
            async with (
                grpc.aio.insecure_channel(f.grpc) as router_channel,
                grpc.aio.insecure_channel(other.address) as other_channel,
                grpc.aio.insecure_channel(source.address) as source_channel,
            ):
                inference = pb_grpc.InferenceStub(router_channel)
                async for response in inference.Generate(
                    _request(GREEDY), metadata=f.metadata(), timeout=120
                ):
                    tokens += response.token_ids
                    if len(tokens) >= 20 and not reply.detail:
                        rid = response.request_id
                        announce = pb_grpc.WorkerStub(other_channel).Submit(
                            pb.WorkerRequest(request_id=rid, prompt_token_ids=[3], adopt=True),
                            metadata=metadata,
                        )
                        reply = await pb_grpc.WorkerStub(source_channel).Migrate(
                            pb.MigrateRequest(request_id=rid, target_address=other.address),
                            metadata=metadata,
                            timeout=30,
                        )
                        announce.cancel()
            assert not reply.accepted
            assert "another model" in reply.detail
            assert response.finish_reason == "length"
            assert tokens == reference
        finally:
            await other.stop()


async def test_receive_kv_needs_an_announced_request_and_the_worker_token(two: Fleet) -> None:
    """Nothing reaches a worker's cache unannounced or without the worker-plane token."""
    target = two.workers[1]
    stage = pb.KVStage(request_id="req-nobody")
    async with grpc.aio.insecure_channel(target.address) as channel:
        stub = pb_grpc.WorkerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.ReceiveKV(iter([stage]), metadata=target.credential.metadata):
                pass
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "waits to be moved here" in (refused.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            async for _ in stub.ReceiveKV(iter([stage])):
                pass
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_drain_moves_every_stream_with_its_kv_before_it_returns(two: Fleet) -> None:
    """`POST /workers/<id>/drain` (what the operator calls before removing a worker's pod):
    the planner spreads the worker's streams, each moves with its KV, and the call returns
    once they are moved; every client gets the undisturbed tokens."""
    requests = [_request(GREEDY), _request(SEEDED)]
    references = [(await two.generate(r))[0] for r in requests]
    for host in two.workers[1:]:  # both requests start on w0 (w1 drained meanwhile)
        await two.router.router.drain(host.spec.worker_id)
    started = asyncio.Event()
    counts = [0, 0]

    async def run(i: int) -> tuple[list[int], list[str], pb.GenerateResponse]:
        tokens: list[int] = []
        workers: list[str] = []
        last = pb.GenerateResponse()
        async with grpc.aio.insecure_channel(two.grpc) as channel:
            stub = pb_grpc.InferenceStub(channel)
            async for last in stub.Generate(requests[i], metadata=two.metadata(), timeout=120):
                tokens += last.token_ids
                workers.append(last.worker_id)
                counts[i] = len(tokens)
                if min(counts) >= 20:
                    started.set()
        return tokens, workers, last

    runs = [asyncio.create_task(run(i)) for i in range(2)]
    await asyncio.wait_for(started.wait(), 60)
    await two.router.router.drain("w1", False)
    moved = await two.router.router.drain("w0")
    assert moved == 2
    assert two.counter("kv_migrations") == 2  # done when the drain returned
    for i, task in enumerate(runs):
        tokens, workers, last = await task
        assert (workers[0], workers[-1]) == ("w0", "w1")
        assert last.finish_reason == "length" and tokens == references[i]
