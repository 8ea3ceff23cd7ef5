"""The worker's KV-migration RPCs (`Migrate`, `ReceiveKV`) and the adopt path of moved requests.

Why a module of its own: the migration work is `migration.KVMigrator`'s; what the `Worker`
service adds is only its mapping onto gRPC (refusals to status codes, a worker that holds no
KV answering as such). `WorkerService` composes one `MigrationRPC` and delegates to it, so
`service.py` stays the serving path and this stays importable without torch (the migrator is
reached through the `Migrator` protocol).

With tracing on, each side of a move is a span under the router's `mainsail.migration` span:
`mainsail.worker.migrate` on the source (the router's trace context arrives as `traceparent`
metadata on `Migrate` and goes on, now this span's, as metadata of the `ReceiveKV` call) and
`mainsail.worker.receive_kv` on the target (`mainsail.workers.tracing`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Protocol

import grpc

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.workers.engine import EngineInputError, EngineRequest, RequestOutput

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from mainsail.workers.tracing import WorkerTracing


class Migrator(Protocol):
    """A worker's side of KV migrations (`mainsail.workers.migration.KVMigrator`)."""

    async def migrate(
        self, request: pb.MigrateRequest, metadata: Sequence[tuple[str, str]] = ()
    ) -> pb.MigrateReply:
        """``metadata`` goes with the `ReceiveKV` call to the target (the trace context)."""
        ...

    def receive(self, stages: AsyncIterator[pb.KVStage]) -> AsyncIterator[pb.KVStageAck]: ...

    def adopted(
        self, request_id: str, announced: EngineRequest | None = None
    ) -> AsyncIterator[RequestOutput]: ...


class MigrationRPC:
    """`Migrate` and `ReceiveKV` of one worker, and the outputs of requests moved to it.

    ``migrator`` is None on a worker that holds no KV (the fake engine): it answers `Migrate`
    with the reason, `ReceiveKV` with UNIMPLEMENTED, and refuses to adopt. ``tracing`` None:
    no span work at all.
    """

    def __init__(self, migrator: Migrator | None, tracing: WorkerTracing | None = None) -> None:
        self.migrator = migrator
        self.tracing = tracing

    def adopted(
        self, request_id: str, announced: EngineRequest | None = None
    ) -> AsyncIterator[RequestOutput]:
        """The outputs of a request announced with ``adopt`` (``announced``: as the router
        sent it, prepared for adoption meanwhile); `EngineInputError` if this worker cannot
        take moved requests."""
        if self.migrator is None:
            raise EngineInputError("adopt: this worker cannot take moved requests")
        return self.migrator.adopted(request_id, announced)

    async def migrate(
        self, request: pb.MigrateRequest, context: grpc.aio.ServicerContext
    ) -> pb.MigrateReply:
        """Move a running request with its KV to another worker (`migration.py`)."""
        if self.migrator is None:
            return pb.MigrateReply(detail="this worker holds no KV to move (fake engine)")
        span = self._span("mainsail.worker.migrate", context, request.request_id)
        if span is None:
            return await self.migrator.migrate(request)
        try:
            assert self.tracing is not None
            reply = await self.migrator.migrate(request, self.tracing.context_of(span))
            span.set_attributes(
                {
                    "mainsail.migration.accepted": reply.accepted,
                    "mainsail.migration.stages": reply.stages,
                    "mainsail.migration.blocks": reply.blocks,
                    "mainsail.migration.pause_seconds": reply.pause_seconds,
                }
            )
            if not reply.accepted:
                _failed(span, reply.detail)
            return reply
        finally:
            span.end()

    async def receive_kv(
        self, request_iterator: AsyncIterator[pb.KVStage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.KVStageAck]:
        """The target side of `Migrate`: blocks and state of an announced request."""
        if self.migrator is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this worker holds no KV")
            return
        span = self._span("mainsail.worker.receive_kv", context)
        last = pb.KVStageAck()
        try:
            async for ack in self.migrator.receive(request_iterator):
                last = ack
                yield ack
        except EngineInputError as exc:
            _failed(span, str(exc))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (ValueError, RuntimeError) as exc:  # KVRefused, MigrationError
            _failed(span, str(exc))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        finally:
            if span is not None:
                span.set_attributes(
                    {
                        "mainsail.migration.blocks": last.blocks,
                        "mainsail.migration.moved": last.adopted,
                    }
                )
                span.end()

    def _span(
        self, name: str, context: grpc.aio.ServicerContext, request_id: str = ""
    ) -> Span | None:
        if self.tracing is None:
            return None
        attributes = {"mainsail.request_id": request_id} if request_id else {}
        return self.tracing.move_span(name, context.invocation_metadata() or (), attributes)


def _failed(span: Span | None, why: str) -> None:
    if span is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, why[:256]))
