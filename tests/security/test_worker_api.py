"""The attacker on the worker's own port: a real worker (real engine, tiny checkpoint).

Without the worker-plane token nothing on the Worker API answers (SubmitMany, Submit, Abort,
Load, KVEvents); a worker started without a token of its own answers nobody at all
(PERMISSION_DENIED naming `MAINSAIL_WORKER_TOKEN`, even to a caller with the deployment's
token), and its engine never sees a request; with mutual TLS on, a client without a
certificate from the deployment's CA cannot even connect; and a request outside the shared
contract is refused for that request only, naming the field, while the stream keeps serving
the others.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.spec.worker_auth import WorkerCredential, disabled_detail
from mainsail.spec.worker_tls import issue
from mainsail.workers.host import WorkerHost
from mainsail.workers.worker_spec import WorkerSpec

pytestmark = pytest.mark.security
TOKEN = WorkerCredential(token=secrets.token_hex(32))


async def _worker(model_dir: Path, credential: WorkerCredential) -> WorkerHost:
    host = WorkerHost(
        WorkerSpec(worker_id="w0", model_name="tiny", model_dir=model_dir), credential
    )
    await host.start()
    return host


def _request(rid: str, **sampling: object) -> pb.WorkerRequest:
    params = pb.SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    for key, value in sampling.items():
        setattr(params, key, value)
    return pb.WorkerRequest(request_id=rid, prompt_token_ids=[5, 6, 7, 8], sampling=params)


async def test_every_worker_rpc_needs_the_worker_token(tiny_model_dir: Path) -> None:
    host = await _worker(tiny_model_dir, TOKEN)
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = pb_grpc.WorkerStub(channel)
            attempts: dict[str, Callable[[tuple[tuple[str, str], ...]], Awaitable[object]]] = {
                "Load": lambda md: stub.Load(pb.LoadRequest(), metadata=md, timeout=5),
                "Abort": lambda md: stub.Abort(
                    pb.AbortRequest(request_id="x"), metadata=md, timeout=5
                ),
                "Health": lambda md: stub.Health(pb.HealthRequest(), metadata=md, timeout=5),
                "Migrate": lambda md: stub.Migrate(pb.MigrateRequest(), metadata=md, timeout=5),
            }
            for client_key in ((), (("authorization", "Bearer sk-a-client-api-key"),)):
                for name, call in attempts.items():
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await call(client_key)
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
                for streaming in (
                    stub.Submit(_request("r1"), metadata=client_key, timeout=5),
                    stub.KVEvents(pb.KVEventsRequest(snapshot=True), metadata=client_key),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await anext(aiter(streaming))
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                many = stub.SubmitMany(metadata=client_key, timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await many.write(pb.WorkerRequestBatch(requests=[_request("r2")]))
                    await many.read()
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # The holder of the token is served.
            load = await stub.Load(pb.LoadRequest(), metadata=TOKEN.metadata, timeout=5)
            assert load.worker_id == "w0"
            chunks = [c async for c in stub.Submit(_request("r3"), metadata=TOKEN.metadata)]
            assert sum(len(c.token_ids) for c in chunks) == 3
    finally:
        await host.stop()


async def test_a_worker_without_a_token_answers_no_one(tiny_model_dir: Path) -> None:
    host = await _worker(tiny_model_dir, WorkerCredential())
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = pb_grpc.WorkerStub(channel)
            for md in ((), TOKEN.metadata):
                errors: list[grpc.aio.AioRpcError] = []
                for unary in (
                    stub.Load(pb.LoadRequest(), metadata=md, timeout=5),
                    stub.Drain(pb.DrainRequest(drain=True), metadata=md, timeout=5),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await unary
                    errors.append(info.value)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await anext(aiter(stub.Submit(_request("r1"), metadata=md, timeout=5)))
                errors.append(info.value)
                many = stub.SubmitMany(metadata=md, timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await many.write(pb.WorkerRequestBatch(requests=[_request("r2")]))
                    await many.read()
                errors.append(info.value)
                kv = stub.ReceiveKV(iter([pb.KVStage(request_id="r3")]), metadata=md, timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await anext(aiter(kv))
                errors.append(info.value)
                assert [e.code() for e in errors] == [grpc.StatusCode.PERMISSION_DENIED] * 5
                assert {e.details() for e in errors} == {disabled_detail("worker")}
        assert host.engine is not None
        seen = host.engine.metrics()
        assert seen.prompt_tokens_total == seen.num_requests_finished == seen.running == 0
    finally:
        await host.stop()


async def test_mutual_tls_refuses_clients_without_a_certificate_of_the_ca(
    tiny_model_dir: Path,
) -> None:
    material = issue()
    credential = WorkerCredential(token="t", tls=material)
    host = await _worker(tiny_model_dir, credential)
    try:
        # Plaintext to a TLS port: no answer at all.
        async with grpc.aio.insecure_channel(host.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.WorkerStub(channel).Load(
                    pb.LoadRequest(), metadata=credential.metadata, timeout=3
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # TLS that trusts the worker but presents no client certificate: refused.
        anonymous = grpc.ssl_channel_credentials(root_certificates=material.ca)
        async with grpc.aio.secure_channel(
            host.address, anonymous, options=credential.channel_options()
        ) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.WorkerStub(channel).Load(
                    pb.LoadRequest(), metadata=credential.metadata, timeout=3
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # A certificate from another CA (another deployment, or self-made): refused.
        stranger = WorkerCredential(token="t", tls=issue())
        creds = grpc.ssl_channel_credentials(
            root_certificates=material.ca,
            private_key=stranger.tls.key if stranger.tls else None,
            certificate_chain=stranger.tls.cert if stranger.tls else None,
        )
        async with grpc.aio.secure_channel(
            host.address, creds, options=credential.channel_options()
        ) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.WorkerStub(channel).Load(
                    pb.LoadRequest(), metadata=credential.metadata, timeout=3
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # The deployment's own material: served.
        own = credential.channel_credentials()
        assert own is not None
        async with grpc.aio.secure_channel(
            host.address, own, options=credential.channel_options()
        ) as channel:
            load = await pb_grpc.WorkerStub(channel).Load(
                pb.LoadRequest(), metadata=credential.metadata, timeout=5
            )
            assert load.worker_id == "w0"
    finally:
        await host.stop()


BAD_REQUESTS: dict[str, dict[str, object]] = {
    "temperature": {"temperature": 50.0},
    "top_p": {"top_p": 0.0},
    "top_k": {"top_k": -3},
    "seed": {"seed": -1},
    "logprobs": {"logprobs": 500},
    "max_tokens": {"max_tokens": 100_000},
}


async def test_a_refused_request_is_its_own_error_and_the_stream_serves_on(
    tiny_model_dir: Path,
) -> None:
    host = await _worker(tiny_model_dir, TOKEN)
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            stream = pb_grpc.WorkerStub(channel).SubmitMany(metadata=TOKEN.metadata, timeout=60)
            good = [_request(f"good-{i}") for i in range(3)]
            bad = [_request(f"bad-{name}", **fields) for name, fields in BAD_REQUESTS.items()]
            bad.append(pb.WorkerRequest(request_id="bad-prompt", prompt_token_ids=[10**6]))
            stop = [_request("bad-stop")]
            stop[0].sampling.stop.extend(["x"] * 40)
            await stream.write(pb.WorkerRequestBatch(requests=[good[0], *bad, *stop, good[1]]))
            await stream.write(pb.WorkerRequestBatch(requests=[good[2]]))
            finished: dict[str, pb.TokenChunk] = {}
            tokens: dict[str, int] = {}
            async for batch in _batches(stream):
                for chunk in batch.chunks:
                    tokens[chunk.request_id] = tokens.get(chunk.request_id, 0) + len(
                        chunk.token_ids
                    )
                    if chunk.finish_reason:
                        finished[chunk.request_id] = chunk
                if len(finished) == len(good) + len(bad) + 1:
                    break
            await stream.done_writing()
        for name in BAD_REQUESTS:
            chunk = finished[f"bad-{name}"]
            assert chunk.finish_reason == "error" and not chunk.token_ids
            assert chunk.error.startswith(f"INVALID_ARGUMENT: {name}:"), chunk.error
        assert finished["bad-prompt"].error.startswith("INVALID_ARGUMENT: prompt:")
        assert finished["bad-stop"].error.startswith("INVALID_ARGUMENT: stop:")
        for request in good:
            assert finished[request.request_id].finish_reason == "length"
            assert tokens[request.request_id] == 3
    finally:
        await host.stop()


async def _batches(
    call: grpc.aio.StreamStreamCall,  # type: ignore[type-arg]
) -> AsyncIterator[pb.TokenChunkBatch]:
    while True:
        batch = await asyncio.wait_for(call.read(), timeout=60)
        if batch is grpc.aio.EOF:
            return
        yield batch
