"""The router's one seam to workers: submit, abort and KV events over gRPC.

`GrpcTransport` keeps one channel per worker address (gRPC sets TCP_NODELAY on its sockets)
and sends every request to that worker over one long-lived `Worker.SubmitMany` stream
(`mainsail.router.fleet.worker_stream`): a gRPC call per request cost the router about as much CPU
as everything else it does for a request. Tests and benchmarks inject
`mainsail.router.testing.FakeTransport` instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, Protocol

import grpc

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.router.errors import TransportError, WorkerRefused
from mainsail.router.fleet.worker_stream import WorkerStream
from mainsail.spec.keepalive import client_options
from mainsail.spec.router_identity import ROUTER_ID_METADATA
from mainsail.spec.worker_auth import WorkerCredential

MIGRATE_TIMEOUT_S = 90.0
"""A KV migration the source has not finished by then is given up (it resumes the request,
and the router moves it by recompute)."""


class WorkerTransport(Protocol):
    """How the router talks to a worker at an address."""

    def submit(self, address: str, request: pb.WorkerRequest) -> AsyncIterator[pb.TokenChunk]:
        """Stream the request's chunks; raises TransportError when the worker fails."""
        ...

    async def abort(self, address: str, request_id: str) -> None:
        """Best effort: stop generating for ``request_id``."""
        ...

    @property
    def moves_kv(self) -> bool:
        """Whether its workers can move a request's KV between them (`migrate`)."""
        ...

    async def migrate(
        self,
        address: str,
        request_id: str,
        target_address: str,
        trace: Mapping[str, str] | None = None,
    ) -> pb.MigrateReply:
        """Ask the worker at ``address`` to move ``request_id`` with its KV to the worker at
        ``target_address`` (which must hold the `adopt` request); the reply says whether
        the target took it. Never raises: a broken call is ``accepted=false``. ``trace``
        (`traceparent`/`tracestate`, the move's span) travels as call metadata."""
        ...

    def kv_events(self, address: str) -> AsyncIterator[pb.KVEventBatch]:
        """The worker's KV event stream, starting with a snapshot."""
        ...

    async def drain(self, address: str, drain: bool) -> pb.DrainReply:
        """Set the worker's own draining state (it tells every router); raises
        TransportError when the worker cannot be reached."""
        ...

    async def scale_experts(self, address: str, expert_parallel: int) -> pb.ScaleExpertsReply:
        """Ask the worker to move to ``expert_parallel`` expert ranks (elastic EP); raises
        `WorkerRefused` ("CODE: detail") when it refuses, TransportError when unreachable."""
        ...

    async def drop(self, address: str) -> None:
        """Forget the connection to a worker that left."""
        ...

    async def close(self) -> None:
        """Close every connection."""
        ...


class GrpcTransport:
    """`WorkerTransport` over grpc.aio channels, one per worker address; every call carries
    the worker-plane token, and channels use mutual TLS when the credential has material.
    SubmitMany streams also carry this router's id (``router_id``, `mainsail.spec.router_identity`)
    so the worker can report this router its own share of the load."""

    def __init__(self, credential: WorkerCredential | None = None, router_id: str = "") -> None:
        self.credential = credential or WorkerCredential()
        self._metadata = self.credential.metadata
        self._stream_metadata = (
            (*self._metadata, (ROUTER_ID_METADATA, router_id)) if router_id else self._metadata
        )
        self._options = [*client_options(), *self.credential.channel_options()]
        self._stubs: dict[str, tuple[grpc.aio.Channel, pb_grpc.WorkerStub]] = {}
        self._streams: dict[str, WorkerStream] = {}

    def _stub(self, address: str) -> pb_grpc.WorkerStub:
        found = self._stubs.get(address)
        if found is None:
            tls = self.credential.channel_credentials()
            channel = (
                grpc.aio.secure_channel(address, tls, options=self._options)
                if tls is not None
                else grpc.aio.insecure_channel(address, options=self._options)
            )
            found = (channel, pb_grpc.WorkerStub(channel))
            self._stubs[address] = found
        return found[1]

    def submit(
        self, address: str, request: pb.WorkerRequest
    ) -> AsyncGenerator[pb.TokenChunk, None]:
        stream = self._streams.get(address)
        if stream is None or stream.closed:
            stub = self._stub(address)
            metadata = self._stream_metadata
            stream = WorkerStream(
                lambda: stub.SubmitMany(metadata=metadata), self._aborter(address)
            )
            self._streams[address] = stream
        return stream.submit(request)

    def _aborter(self, address: str) -> Callable[[str], Coroutine[Any, Any, None]]:
        async def abort(request_id: str) -> None:
            await self.abort(address, request_id)

        return abort

    async def abort(self, address: str, request_id: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._stub(address).Abort(
                pb.AbortRequest(request_id=request_id), timeout=2.0, metadata=self._metadata
            )

    @property
    def moves_kv(self) -> bool:
        return True

    async def migrate(
        self,
        address: str,
        request_id: str,
        target_address: str,
        trace: Mapping[str, str] | None = None,
    ) -> pb.MigrateReply:
        request = pb.MigrateRequest(request_id=request_id, target_address=target_address)
        metadata = (*self._metadata, *(trace or {}).items())
        try:
            reply: pb.MigrateReply = await self._stub(address).Migrate(
                request, timeout=MIGRATE_TIMEOUT_S, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            return pb.MigrateReply(detail=f"{exc.code().name}: {exc.details()}")
        return reply

    async def kv_events(self, address: str) -> AsyncIterator[pb.KVEventBatch]:
        call = self._stub(address).KVEvents(
            pb.KVEventsRequest(snapshot=True), metadata=self._metadata
        )
        try:
            async for batch in call:
                yield batch
        except grpc.aio.AioRpcError as exc:
            raise TransportError(f"{exc.code().name}: {exc.details()}") from exc
        finally:
            call.cancel()

    async def drain(self, address: str, drain: bool) -> pb.DrainReply:
        try:
            reply: pb.DrainReply = await self._stub(address).Drain(
                pb.DrainRequest(drain=drain), timeout=5.0, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise TransportError(f"{exc.code().name}: {exc.details()}") from exc
        return reply

    async def scale_experts(self, address: str, expert_parallel: int) -> pb.ScaleExpertsReply:
        try:
            reply: pb.ScaleExpertsReply = await self._stub(address).ScaleExperts(
                pb.ScaleExpertsRequest(expert_parallel=expert_parallel),
                timeout=10.0,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            message = f"{exc.code().name}: {exc.details()}"
            if exc.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.UNIMPLEMENTED,
            ):
                raise WorkerRefused(message) from exc
            raise TransportError(message) from exc
        return reply

    async def drop(self, address: str) -> None:
        stream = self._streams.pop(address, None)
        if stream is not None:
            stream.close()
        found = self._stubs.pop(address, None)
        if found is not None:
            await found[0].close()

    async def close(self) -> None:
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()
        for channel, _ in self._stubs.values():
            await channel.close()
        self._stubs.clear()


__all__ = ["GrpcTransport", "TransportError", "WorkerTransport"]
