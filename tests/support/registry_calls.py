"""Registry calls and a loopback Registry server, shared by the tests that play a worker.

The security tests send every Registry call (Register, Heartbeat, Deregister) with each set of
credentials an attacker might try and expect one status for all; the unit tests serve a
Registry servicer on a loopback port. Written once here so each test says only what differs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager

import grpc
import pytest

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc

Metadata = Sequence[tuple[str, str]]


async def expect_every_registry_call_refused(
    channel: grpc.aio.Channel,
    register: pb.WorkerInfo,
    worker_id: str,
    metadata_sets: Iterable[Metadata],
    code: grpc.StatusCode,
    details: str | None = None,
) -> None:
    """Register, Heartbeat (claiming a load of 999) and Deregister of `worker_id`, with each
    metadata set: every call fails with `code` (and `details`, when given)."""
    registry = pb_grpc.RegistryStub(channel)
    for md in metadata_sets:
        calls = (
            registry.Register(register, metadata=md, timeout=5),
            registry.Heartbeat(
                pb.HeartbeatRequest(worker_id=worker_id, load=pb.LoadSnapshot(running=999)),
                metadata=md,
                timeout=5,
            ),
            registry.Deregister(pb.DeregisterRequest(worker_id=worker_id), metadata=md, timeout=5),
        )
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == code, (md, info.value.details())
            if details is not None:
                assert info.value.details() == details


@asynccontextmanager
async def registry_on_loopback(servicer: pb_grpc.RegistryServicer) -> AsyncIterator[str]:
    """`servicer` served on a free loopback port; yields its address."""
    server = grpc.aio.server()
    pb_grpc.add_RegistryServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)
