"""The router's one seam to workers: submit, abort and KV events over gRPC.

`GrpcTransport` keeps one channel per worker address (HTTP/2 multiplexes every request to
that worker over it; gRPC sets TCP_NODELAY on its sockets). Tests and benchmarks inject
`mainsail.router.testing.FakeTransport` instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

import grpc

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc


class TransportError(Exception):
    """The worker could not be reached or broke the stream."""


class WorkerTransport(Protocol):
    """How the router talks to a worker at an address."""

    def submit(self, address: str, request: pb.WorkerRequest) -> AsyncIterator[pb.TokenChunk]:
        """Stream the request's chunks; raises TransportError when the worker fails."""
        ...

    async def abort(self, address: str, request_id: str) -> None:
        """Best effort: stop generating for ``request_id``."""
        ...

    def kv_events(self, address: str) -> AsyncIterator[pb.KVEventBatch]:
        """The worker's KV event stream, starting with a snapshot."""
        ...

    async def drop(self, address: str) -> None:
        """Forget the connection to a worker that left."""
        ...

    async def close(self) -> None:
        """Close every connection."""
        ...


_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class GrpcTransport:
    """`WorkerTransport` over grpc.aio channels, one per worker address."""

    def __init__(self) -> None:
        self._stubs: dict[str, tuple[grpc.aio.Channel, pb_grpc.WorkerStub]] = {}

    def _stub(self, address: str) -> pb_grpc.WorkerStub:
        found = self._stubs.get(address)
        if found is None:
            channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
            found = (channel, pb_grpc.WorkerStub(channel))
            self._stubs[address] = found
        return found[1]

    async def submit(self, address: str, request: pb.WorkerRequest) -> AsyncIterator[pb.TokenChunk]:
        call = self._stub(address).Submit(request)
        try:
            async for chunk in call:
                yield chunk
        except grpc.aio.AioRpcError as exc:
            raise TransportError(f"{exc.code().name}: {exc.details()}") from exc
        finally:
            call.cancel()

    async def abort(self, address: str, request_id: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._stub(address).Abort(pb.AbortRequest(request_id=request_id), timeout=2.0)

    async def kv_events(self, address: str) -> AsyncIterator[pb.KVEventBatch]:
        call = self._stub(address).KVEvents(pb.KVEventsRequest(snapshot=True))
        try:
            async for batch in call:
                yield batch
        except grpc.aio.AioRpcError as exc:
            raise TransportError(f"{exc.code().name}: {exc.details()}") from exc
        finally:
            call.cancel()

    async def drop(self, address: str) -> None:
        found = self._stubs.pop(address, None)
        if found is not None:
            await found[0].close()

    async def close(self) -> None:
        for channel, _ in self._stubs.values():
            await channel.close()
        self._stubs.clear()
