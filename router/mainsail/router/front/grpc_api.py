"""The gRPC fronts: `Inference` for clients and `Registry` for workers.

`Inference.Generate` calls the same `Router.open` path as the HTTP front; a RouterError
becomes the matching gRPC status with the same message. The standard health service and
server reflection are added by `server.py`, so `grpcurl` works without the .proto file.

`Registry` is the worker plane's door, served only on the router's fleet port (`server.py`;
mutual TLS there when the worker plane has TLS material): every call needs the worker token
(`mainsail.spec.worker_auth`), never a client API key, and answers UNAUTHENTICATED otherwise;
a router without a worker token answers every call PERMISSION_DENIED, naming the setting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.router.errors import RouterError
from mainsail.router.front.auth import Credentials
from mainsail.router.routing.router import Router
from mainsail.spec.worker_auth import WorkerCredential


class InferenceService(pb_grpc.InferenceServicer):
    """Client-facing generation over gRPC (server streaming)."""

    def __init__(self, router: Router, credentials: Credentials | None = None) -> None:
        self.router = router
        self.credentials = credentials or Credentials()

    async def _authorize(self, context: grpc.aio.ServicerContext) -> str:
        """The caller's tenant; aborts with UNAUTHENTICATED unless the `authorization`
        metadata carries a key (when keys are set)."""
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        value = metadata.get("authorization")
        tenant = self.credentials.tenant(value, metadata.get(self.credentials.tenant_header))
        if not self.credentials.api_keys:
            return tenant
        if not self.credentials.client_allowed(value):
            self.router.metrics.requests.labels("grpc", "http_401").inc()
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "Incorrect or missing API key: send metadata `authorization: Bearer <key>`.",
            )
        return tenant

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        tenant = await self._authorize(context)
        trace = self.router.tracing.begin("grpc", context.invocation_metadata() or ())
        try:
            route = await self.router.open(request, tenant=tenant, trace=trace)
        except RouterError as exc:
            self.router.metrics.requests.labels("grpc", f"http_{exc.status}").inc()
            # The field comes first, as the worker names it (`param: message`); a 429's
            # back-off travels as the `retry-after` trailer (seconds), as over HTTP.
            detail = f"{exc.param}: {exc.message}" if exc.param else exc.message
            trailers = tuple((k.decode(), v.decode()) for k, v in exc.headers())
            await context.abort(exc.grpc_status(), detail, trailing_metadata=trailers)
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

    def __init__(self, router: Router, credential: WorkerCredential | None = None) -> None:
        self.router = router
        self.credential = credential or WorkerCredential()

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        refused = self.credential.refusal(context.invocation_metadata(), "router")
        if refused is not None:
            code, detail = refused
            reason = (
                "unauthenticated" if code == grpc.StatusCode.UNAUTHENTICATED else "no worker token"
            )
            self.router.metrics.refusals.labels(reason).inc()
            await context.abort(code, detail)

    async def Register(
        self, request: pb.WorkerInfo, context: grpc.aio.ServicerContext
    ) -> pb.RegisterReply:
        await self._authorize(context)
        verdict = self.router.registry.register(request)
        if not verdict.accepted:
            self.router.metrics.refusals.labels(verdict.reason or "bad registration").inc()
        self.router.notify()
        return pb.RegisterReply(
            accepted=verdict.accepted,
            detail=verdict.detail,
            heartbeat_interval=self.router.config.heartbeat_interval,
            retry_after=verdict.retry_after,
            router_id=self.router.registry.router_id,
        )

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatReply:
        await self._authorize(context)
        known = self.router.registry.heartbeat(request.worker_id, request.load)
        self.router.notify()
        return pb.HeartbeatReply(known=known)

    async def Deregister(
        self, request: pb.DeregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeregisterReply:
        await self._authorize(context)
        self.router.registry.deregister(request.worker_id)
        return pb.DeregisterReply()
