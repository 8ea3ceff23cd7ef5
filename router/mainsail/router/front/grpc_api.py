"""The gRPC fronts: `Inference` for clients and `Registry` for workers.

`Inference.Generate` calls the same `Router.open` path as the HTTP front; a RouterError
becomes the matching gRPC status with the same message. The standard health service and
server reflection are added by `server.py`, so `grpcurl` works without the .proto file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.router.errors import RouterError
from mainsail.router.front.auth import Credentials
from mainsail.router.routing.router import Router


class InferenceService(pb_grpc.InferenceServicer):
    """Client-facing generation over gRPC (server streaming)."""

    def __init__(self, router: Router, credentials: Credentials | None = None) -> None:
        self.router = router
        self.credentials = credentials or Credentials()

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        """Aborts with UNAUTHENTICATED unless the `authorization` metadata carries a key."""
        if not self.credentials.api_keys:
            return
        metadata = dict(context.invocation_metadata() or ())
        value = metadata.get("authorization")
        if not self.credentials.client_allowed(value if isinstance(value, str) else None):
            self.router.metrics.requests.labels("grpc", "http_401").inc()
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "Incorrect or missing API key: send metadata `authorization: Bearer <key>`.",
            )

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        await self._authorize(context)
        try:
            route = await self.router.open(request)
        except RouterError as exc:
            self.router.metrics.requests.labels("grpc", f"http_{exc.status}").inc()
            await context.abort(exc.grpc_status(), exc.message)
            return
        async for response in self.router.responses(route):
            yield response

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        await self._authorize(context)
        config = self.router.config
        info = pb.ModelInfo(
            id=config.model_name,
            owned_by="mainsail",
            max_model_len=config.max_model_len,
            adapters=list(config.adapters),
        )
        return pb.ListModelsResponse(models=[info])


class RegistryService(pb_grpc.RegistryServicer):
    """Worker registration and heartbeats."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def Register(
        self, request: pb.WorkerInfo, context: grpc.aio.ServicerContext
    ) -> pb.RegisterReply:
        verdict = self.router.registry.register(request)
        if not verdict.accepted:
            reason = verdict.detail.split(":", 1)[0]
            self.router.metrics.refusals.labels(reason).inc()
        self.router.notify()
        return pb.RegisterReply(
            accepted=verdict.accepted,
            detail=verdict.detail,
            heartbeat_interval=self.router.config.heartbeat_interval,
        )

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatReply:
        known = self.router.registry.heartbeat(request.worker_id, request.load)
        self.router.notify()
        return pb.HeartbeatReply(known=known)

    async def Deregister(
        self, request: pb.DeregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeregisterReply:
        self.router.registry.deregister(request.worker_id)
        return pb.DeregisterReply()
