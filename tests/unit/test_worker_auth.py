"""The worker plane's credential is closed by default: the logic of `WorkerCredential`, and both
of its doors over real loopback gRPC servers: the router's `Registry` (with a real `Router`)
and a worker's `Worker` service behind `token_guard` (the real `WorkerService`).

A party without `MAINSAIL_WORKER_TOKEN` refuses every call, whatever the caller sends, with
PERMISSION_DENIED naming the setting; a party with one refuses calls without it
(UNAUTHENTICATED). The real `Registrar` reports either as a final refusal.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from support.registry_calls import registry_on_loopback

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.router.front.grpc_api import RegistryService
from mainsail.router.routing.router import Router
from mainsail.router.testing import fake_router
from mainsail.spec.worker_auth import (
    UNAUTHENTICATED_DETAIL,
    WORKER_TOKEN_ENV,
    WorkerCredential,
    disabled_detail,
    token_guard,
)
from mainsail.workers.engine import EngineRequest, RequestOutput
from mainsail.workers.fake_engine import FakeEngine
from mainsail.workers.kv_publisher import KVEventHub
from mainsail.workers.registration import Registrar, RegistrationRefused
from mainsail.workers.service import WorkerService

pytestmark = pytest.mark.unit
TOKEN = WorkerCredential(token=secrets.token_hex(32))
NONE = WorkerCredential()
WRONG = WorkerCredential(token=secrets.token_hex(32))
Metadata = tuple[tuple[str, str], ...]
PRESENTED: tuple[Metadata, ...] = ((), WRONG.metadata, TOKEN.metadata, (("authorization", ""),))


def test_without_a_token_nothing_is_allowed() -> None:
    assert not NONE.enabled and NONE.metadata == ()
    for metadata in (None, *PRESENTED, (("authorization", "Bearer "),)):
        assert not NONE.allows(metadata), metadata
        refusal = NONE.refusal(metadata, "router")
        assert refusal is not None and refusal[0] == grpc.StatusCode.PERMISSION_DENIED


def test_an_empty_or_blank_environment_token_is_no_token() -> None:
    for value in ("", "   ", "\n"):
        assert not WorkerCredential.from_env({WORKER_TOKEN_ENV: value}).enabled
    assert not WorkerCredential.from_env({}).enabled
    assert WorkerCredential.from_env({WORKER_TOKEN_ENV: " t "}) == WorkerCredential(token="t")


def test_with_a_token_only_that_bearer_passes() -> None:
    token = str(TOKEN.token)
    assert TOKEN.enabled and TOKEN.metadata == (("authorization", f"Bearer {token}"),)
    for passes in (f"Bearer {token}", f"bearer  {token} ", f"BEARER {token}"):
        assert TOKEN.allows([("authorization", passes)]), passes
        assert TOKEN.refusal([("authorization", passes)], "worker") is None
    refused = (
        (),
        (("authorization", f"Basic {token}"),),
        (("authorization", token),),
        (("authorization", f"Bearer {token}x"),),
        (("x-authorization", f"Bearer {token}"),),
        WRONG.metadata,
    )
    for metadata in refused:
        assert not TOKEN.allows(metadata), metadata
        assert TOKEN.refusal(metadata, "worker") == (
            grpc.StatusCode.UNAUTHENTICATED,
            UNAUTHENTICATED_DETAIL,
        )
    binary = [("authorization-bin", f"Bearer {token}".encode())]
    assert not TOKEN.allows(binary)  # binary metadata is never a bearer


def test_the_disabled_detail_names_the_setting_and_the_party() -> None:
    for party, what in (("router", "no worker can register"), ("worker", "no router")):
        detail = disabled_detail(party)  # type: ignore[arg-type]
        assert WORKER_TOKEN_ENV in detail and f"this {party} was started without" in detail
        assert what in detail
        assert NONE.refusal((), party) == (grpc.StatusCode.PERMISSION_DENIED, detail)  # type: ignore[arg-type]


@asynccontextmanager
async def registry(router: Router, credential: WorkerCredential) -> AsyncIterator[str]:
    """The router's `Registry` on a loopback port, as its fleet port serves it."""
    async with registry_on_loopback(RegistryService(router, credential)) as address:
        yield address


def _info(router: Router, worker_id: str) -> pb.WorkerInfo:
    kv = router.config.kv_hash
    return pb.WorkerInfo(
        worker_id=worker_id, address="127.0.0.1:1", model=router.config.model_name,
        max_model_len=router.config.max_model_len, max_num_seqs=8,
        kv_hash=pb.KVHashParams(
            block_size=kv.block_size, hash_seed=kv.hash_seed, algorithm=kv.algorithm
        ),
    )  # fmt: skip


def _refusals(router: Router, reason: str) -> float:
    value: float = router.metrics.refusals.labels(reason)._value.get()
    return value


async def test_a_registry_without_a_token_refuses_every_call_naming_the_setting(
    tiny_model_dir: Path,
) -> None:
    router, _ = fake_router(tiny_model_dir)
    async with registry(router, NONE) as address, grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RegistryStub(channel)
        for metadata in PRESENTED:
            calls = (
                stub.Register(_info(router, "evil"), metadata=metadata, timeout=5),
                stub.Heartbeat(pb.HeartbeatRequest(worker_id="evil"), metadata=metadata),
                stub.Deregister(pb.DeregisterRequest(worker_id="evil"), metadata=metadata),
            )
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert info.value.details() == disabled_detail("router")
    assert router.registry.entries() == []
    assert _refusals(router, "no worker token") == 3 * len(PRESENTED)


async def test_the_real_registrar_reports_either_refusal_as_final(tiny_model_dir: Path) -> None:
    router, _ = fake_router(tiny_model_dir)
    async with registry(router, NONE) as address:
        registrar = Registrar(address, _info(router, "w0"), pb.LoadSnapshot, credential=TOKEN)
        with pytest.raises(RegistrationRefused, match=f"PERMISSION_DENIED: .*{WORKER_TOKEN_ENV}"):
            await registrar.run()
        assert registrar.refused == disabled_detail("router")
    async with registry(router, TOKEN) as address:
        stranger = Registrar(address, _info(router, "w0"), pb.LoadSnapshot, credential=NONE)
        with pytest.raises(RegistrationRefused, match="UNAUTHENTICATED"):
            await stranger.run()
        assert router.registry.entries() == []
        # The control: the same Registrar with the router's token registers.
        async with grpc.aio.insecure_channel(address) as channel:
            reply = await pb_grpc.RegistryStub(channel).Register(
                _info(router, "w0"), metadata=TOKEN.metadata, timeout=5
            )
        assert reply.accepted and [e.worker_id for e in router.registry.entries()] == ["w0"]


class CountingEngine(FakeEngine):
    """FakeEngine counting the requests that reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    async def generate(self, req: EngineRequest) -> AsyncIterator[RequestOutput]:
        self.seen += 1
        async for out in super().generate(req):
            yield out


@asynccontextmanager
async def worker_api(
    engine: FakeEngine, credential: WorkerCredential
) -> AsyncIterator[pb_grpc.WorkerStub]:
    """A `WorkerService` behind `token_guard`, as `WorkerHost` serves it, and a stub for it."""
    hub = KVEventHub("w", engine.drain_kv_events, engine.kv_snapshot)
    server = grpc.aio.server(interceptors=[token_guard(credential, "worker")])
    pb_grpc.add_WorkerServicer_to_server(WorkerService("w", engine, hub, max_num_seqs=8), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.WorkerStub(channel)
    finally:
        await server.stop(grace=None)


def _request(rid: str) -> pb.WorkerRequest:
    return pb.WorkerRequest(
        request_id=rid, prompt_token_ids=[5, 6, 7], sampling=pb.SamplingParams(max_tokens=2)
    )


async def _refused(call: Awaitable[object] | AsyncIterable[object]) -> grpc.aio.AioRpcError:
    """The error a unary call or a stream ends with (the test fails if it ends without one)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if isinstance(call, AsyncIterable):
            async for _ in call:
                pass
        else:
            await call
    return info.value


async def test_a_worker_without_a_token_refuses_every_call_of_every_shape() -> None:
    engine = CountingEngine()
    async with worker_api(engine, NONE) as stub:
        for md in PRESENTED:
            batch = pb.WorkerRequestBatch(requests=[_request("m")])
            outcomes = {
                "Load (unary)": await _refused(stub.Load(pb.LoadRequest(), metadata=md)),
                "Drain (unary)": await _refused(
                    stub.Drain(pb.DrainRequest(drain=True), metadata=md)
                ),
                "Submit (server streaming)": await _refused(
                    stub.Submit(_request("s"), metadata=md, timeout=5)
                ),
                "SubmitMany (bidi)": await _refused(
                    stub.SubmitMany(iter([batch]), metadata=md, timeout=5)
                ),
                "ReceiveKV (bidi)": await _refused(
                    stub.ReceiveKV(iter([pb.KVStage()]), metadata=md, timeout=5)
                ),
            }
            for name, error in outcomes.items():
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (name, md)
                assert error.details() == disabled_detail("worker"), name
    assert engine.seen == 0


async def test_a_worker_with_a_token_serves_only_its_bearer() -> None:
    engine = CountingEngine()
    async with worker_api(engine, TOKEN) as stub:
        for md in ((), WRONG.metadata):
            error = await _refused(stub.Submit(_request("s"), metadata=md, timeout=5))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert error.details() == UNAUTHENTICATED_DETAIL
        assert engine.seen == 0
        chunks = [c async for c in stub.Submit(_request("ok"), metadata=TOKEN.metadata)]
        assert chunks[-1].finish_reason == "length" and engine.seen == 1
