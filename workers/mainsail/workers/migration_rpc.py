"""The worker's KV-migration RPCs (`Migrate`, `ReceiveKV`) and the adopt path of moved requests.

Why a module of its own: the migration work is `migration.KVMigrator`'s; what the `Worker`
service adds is only its mapping onto gRPC (refusals to status codes, a worker that holds no
KV answering as such). `WorkerService` composes one `MigrationRPC` and delegates to it, so
`service.py` stays the serving path and this stays importable without torch (the migrator is
reached through the `Migrator` protocol).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import grpc

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.workers.engine import EngineInputError, RequestOutput


class Migrator(Protocol):
    """A worker's side of KV migrations (`mainsail.workers.migration.KVMigrator`)."""

    async def migrate(self, request: pb.MigrateRequest) -> pb.MigrateReply: ...

    def receive(self, stages: AsyncIterator[pb.KVStage]) -> AsyncIterator[pb.KVStageAck]: ...

    def adopted(self, request_id: str) -> AsyncIterator[RequestOutput]: ...


class MigrationRPC:
    """`Migrate` and `ReceiveKV` of one worker, and the outputs of requests moved to it.

    ``migrator`` is None on a worker that holds no KV (the fake engine): it answers `Migrate`
    with the reason, `ReceiveKV` with UNIMPLEMENTED, and refuses to adopt.
    """

    def __init__(self, migrator: Migrator | None) -> None:
        self.migrator = migrator

    def adopted(self, request_id: str) -> AsyncIterator[RequestOutput]:
        """The outputs of a request announced with ``adopt``; `EngineInputError` if this
        worker cannot take moved requests."""
        if self.migrator is None:
            raise EngineInputError("adopt: this worker cannot take moved requests")
        return self.migrator.adopted(request_id)

    async def migrate(
        self, request: pb.MigrateRequest, context: grpc.aio.ServicerContext
    ) -> pb.MigrateReply:
        """Move a running request with its KV to another worker (`migration.py`)."""
        if self.migrator is None:
            return pb.MigrateReply(detail="this worker holds no KV to move (fake engine)")
        return await self.migrator.migrate(request)

    async def receive_kv(
        self, request_iterator: AsyncIterator[pb.KVStage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.KVStageAck]:
        """The target side of `Migrate`: blocks and state of an announced request."""
        if self.migrator is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this worker holds no KV")
            return
        try:
            async for ack in self.migrator.receive(request_iterator):
                yield ack
        except EngineInputError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (ValueError, RuntimeError) as exc:  # KVRefused, MigrationError
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
