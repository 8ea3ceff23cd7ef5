"""Idle router -> worker streams survive: both ends use `mainsail.spec.keepalive`.

The router pings an idle connection every 10 s; a gRPC server left at its defaults answers
that with GOAWAY `too_many_pings` after a few pings and every stream on the connection dies
(checked here once as the control). The worker's server accepts those pings, so the router's
KV event stream to a real worker is still alive after more than 30 s of silence.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from support.fleet import WORKER

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.fleet.transport import GrpcTransport
from mainsail.spec.keepalive import PING_INTERVAL_MS, client_options, server_options
from mainsail.workers.host import WorkerHost
from mainsail.workers.worker_spec import WorkerSpec

pytestmark = pytest.mark.security
IDLE_S = 3.5 * PING_INTERVAL_MS / 1000  # past the default server's ping strikes


def test_the_server_accepts_the_clients_ping_rate() -> None:
    client = dict(client_options())
    server = dict(server_options())
    assert (
        client["grpc.keepalive_time_ms"]
        >= server["grpc.http2.min_recv_ping_interval_without_data_ms"]
    )
    assert server["grpc.keepalive_permit_without_calls"] == 1


async def _idle_watch_survives(server_opts: list[tuple[str, int]]) -> bool:
    server = grpc.aio.server(options=server_opts)
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("s", health_pb2.HealthCheckResponse.SERVING)
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=client_options()
        ) as channel:
            call = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="s")
            )
            await call.read()
            await asyncio.sleep(IDLE_S)
            await servicer.set("s", health_pb2.HealthCheckResponse.NOT_SERVING)
            try:
                reply = await asyncio.wait_for(call.read(), 10)
            except grpc.aio.AioRpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.NOT_SERVING)
    finally:
        await server.stop(0)


async def _router_worker_stream_survives(model_dir: Path) -> bool:
    """The router's transport to a real worker: its KV event stream after idling."""
    host = WorkerHost(WorkerSpec(worker_id="w0", model_name="tiny", model_dir=model_dir), WORKER)
    await host.start()
    transport = GrpcTransport(WORKER)
    try:
        events = aiter(transport.kv_events(host.address))
        snapshot = await anext(events)
        assert snapshot.events[0].kind == pb.KVEvent.KIND_SNAPSHOT
        await asyncio.sleep(IDLE_S)
        request = pb.WorkerRequest(
            request_id="r1",
            prompt_token_ids=list(range(5, 40)),
            sampling=pb.SamplingParams(max_tokens=2, temperature=0),
        )
        chunks = [c async for c in transport.submit(host.address, request)]
        assert chunks[-1].finish_reason == "length"
        stored = await asyncio.wait_for(anext(events), 10)  # the same stream, still open
        return any(e.kind == pb.KVEvent.KIND_STORED for e in stored.events)
    finally:
        await transport.close()
        await host.stop()


async def test_idle_streams_survive_our_settings_and_die_on_grpc_defaults(
    tiny_model_dir: Path,
) -> None:
    control, ours, real = await asyncio.gather(
        _idle_watch_survives([]),
        _idle_watch_survives(server_options()),
        _router_worker_stream_survives(tiny_model_dir),
    )
    assert not control, "the control (default server settings) should have sent GOAWAY"
    assert ours and real
