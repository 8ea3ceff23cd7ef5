"""The router process: both fronts, the registry's pruning loop and the KV event feed.

`RouterServer` assembles the parts from a `RouterConfig` (seams — transport, clock, RNG, tracer
provider factory — injectable for tests) and serves, from one asyncio loop, the clients' ports
— HTTP (`front.http_server`, on a socket we bind with TCP_NODELAY) and gRPC (Inference,
standard health, reflection) — and the workers' own "fleet port" (Registry only). Why a
separate listener: registration decides who receives users' prompts, so it gets the worker
plane's credential on a port clients never need (a NetworkPolicy admits only worker pods to
it), with mutual TLS when the worker plane has TLS material; a client port never answers a
Registry call. Without a worker token the fleet port refuses every call (PERMISSION_DENIED),
and the start says so once, loudly: such a router serves no worker rather than any.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import socket
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.router.fleet.kv_events import KVEventFeed
from mainsail.router.fleet.pool_load import PoolLoadCollector
from mainsail.router.fleet.registry import WorkerEntry, WorkerRegistry
from mainsail.router.fleet.transport import GrpcTransport, WorkerTransport
from mainsail.router.front.auth import Credentials
from mainsail.router.front.grpc_api import InferenceService, RegistryService
from mainsail.router.front.http_api import HttpFront
from mainsail.router.front.http_server import HttpServer
from mainsail.router.kvindex import ApproximateIndex, GlobalKVIndex
from mainsail.router.metrics import RouterMetrics
from mainsail.router.routing.router import Router
from mainsail.router.scheduling import build_profile
from mainsail.router.settings import RouterConfig
from mainsail.router.tracing import RouterTracing
from mainsail.spec.keepalive import server_options
from mainsail.spec.tokenizer import Tokenizer
from mainsail.spec.tracing import ProviderFactory
from mainsail.spec.worker_auth import WORKER_TOKEN_ENV, WorkerCredential

log = logging.getLogger(__name__)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket with TCP_NODELAY (accepted sockets inherit it on Linux)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class RouterServer:
    """A running router; `start()` binds, `stop()` releases everything."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        transport: WorkerTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        credentials: Credentials | None = None,
        worker_credential: WorkerCredential | None = None,
        tracer_provider_factory: ProviderFactory | None = None,
    ) -> None:
        self.config = config
        creds = credentials if credentials is not None else Credentials.from_env()
        if config.tenant_header and not creds.tenant_header:
            creds = dataclasses.replace(creds, tenant_header=config.tenant_header.lower())
        self.credentials = creds
        self.worker_credential = (
            worker_credential if worker_credential is not None else WorkerCredential.from_env()
        )
        self.metrics = RouterMetrics()
        self.registry = WorkerRegistry(
            config.model_name, config.kv_hash, expiry=config.worker_expiry, clock=clock
        )
        self.transport = transport or GrpcTransport(
            self.worker_credential, router_id=self.registry.router_id
        )
        self.index = GlobalKVIndex(max_blocks=config.kv_index_max_blocks)
        self.approx = ApproximateIndex(max_blocks=max(1, config.kv_index_max_blocks // 10))
        self.feed = KVEventFeed(self.index, self.transport)
        self.tracing = RouterTracing(
            config.tracing,
            tracer_provider_factory,
            resource={
                "service.instance.id": socket.gethostname(),
                "mainsail.model": config.model_name,
            },
            block_size=config.kv_hash.block_size,
        )
        self.router = Router(
            config,
            Tokenizer(config.model_dir),
            self.registry,
            self.transport,
            build_profile(config.profile, rng=rng),
            self.index,
            self.metrics,
            clock,
            approx=self.approx,
            publishes_events=self.feed.publishes,
            tracing=self.tracing,
        )
        self.registry.subscribe(
            on_add=self._added, on_remove=self._removed, on_drain=self._drain_heard
        )
        self.metrics.registry.register(PoolLoadCollector(self.registry.entries))
        self._grpc: grpc.aio.Server | None = None
        self._http: HttpServer | None = None
        self._tasks: list[asyncio.Task[None]] = []  # the background loops
        self._removals: set[asyncio.Task[None]] = set()  # connection drops, until done
        self.http_port = 0
        self.grpc_port = 0
        self._fleet: grpc.aio.Server | None = None
        self.fleet_port = 0

    def _added(self, entry: WorkerEntry) -> None:
        self.feed.on_add(entry)
        self._count_workers()

    def _removed(self, entry: WorkerEntry) -> None:
        self.feed.on_remove(entry)
        self.approx.remove_worker(entry.worker_id)
        self._count_workers()
        task = asyncio.get_running_loop().create_task(self.transport.drop(entry.address))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    def _drain_heard(self, entry: WorkerEntry) -> None:
        """A worker reports it is draining (asked through any router replica): move this
        router's requests off it."""
        self.router.notify()
        task = asyncio.get_running_loop().create_task(self._evacuate(entry.worker_id))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    async def _evacuate(self, worker_id: str) -> None:
        moved = await self.router.moves.evacuate(worker_id)
        if moved:
            log.info("worker %s is draining; moved %d requests off it", worker_id, moved)

    def _count_workers(self) -> None:
        roles: dict[str, int] = {"unified": 0, "prefill": 0, "decode": 0, "encode": 0}
        for entry in self.registry.entries():
            roles[entry.info.role or "unified"] = roles.get(entry.info.role, 0) + 1
        for role, count in roles.items():
            self.metrics.workers.labels(role).set(count)

    async def start(self) -> None:
        """Bind both fronts and start the background loops."""
        cfg = self.config
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *server_options()])
        pb_grpc.add_InferenceServicer_to_server(
            InferenceService(self.router, self.credentials), server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names = [
            pb.DESCRIPTOR.services_by_name["Inference"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, server)
        self.grpc_port = server.add_insecure_port(f"{cfg.host}:{cfg.grpc_port}")
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC port {cfg.host}:{cfg.grpc_port}")
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        self._grpc = server
        self._fleet = await self._start_fleet()
        if not self.worker_credential.enabled:
            log.warning(
                "worker registration disabled: no %s, so the fleet port refuses every "
                "Register, Heartbeat and Deregister (PERMISSION_DENIED) and no worker can "
                "join; start the router and its workers with the same %s",
                WORKER_TOKEN_ENV,
                WORKER_TOKEN_ENV,
            )

        sock = bind_socket(cfg.host, cfg.http_port)
        self.http_port = sock.getsockname()[1]
        front = HttpFront(self.router, credentials=self.credentials)
        self._http = HttpServer(
            front.handle,
            max_body_bytes=cfg.max_body_bytes,
            keep_alive_s=30.0,
            max_head_bytes=cfg.max_head_bytes,
            header_timeout=cfg.header_timeout,
            body_timeout=cfg.body_timeout,
            max_connections=cfg.max_connections,
        )
        await self._http.start(sock)
        self._tasks.append(asyncio.create_task(self._prune_loop()))
        if cfg.rebalance.enabled:
            self._tasks.append(asyncio.create_task(self._rebalance_loop()))
        log.info(
            "router serving HTTP :%d gRPC :%d fleet :%d%s",
            self.http_port,
            self.grpc_port,
            self.fleet_port,
            " (mutual TLS)" if self.worker_credential.tls is not None else "",
        )

    async def _start_fleet(self) -> grpc.aio.Server:
        """The fleet port: `Registry` alone, token-guarded, over mutual TLS when configured."""
        cfg = self.config
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *server_options()])
        pb_grpc.add_RegistryServicer_to_server(
            RegistryService(self.router, self.worker_credential), server
        )
        address = f"{cfg.fleet_host}:{cfg.fleet_port}"
        tls = self.worker_credential.server_credentials()
        port = (
            server.add_secure_port(address, tls)
            if tls is not None
            else server.add_insecure_port(address)
        )
        if port == 0:
            raise OSError(f"cannot bind the fleet port {address}")
        await server.start()
        self.fleet_port = port
        return server

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            for worker_id in self.registry.prune():
                log.warning("worker %s missed its heartbeats; dropped", worker_id)
            self.metrics.index_entries.set(self.index.stats().entries)

    async def _rebalance_loop(self) -> None:
        """Automatic live migration rounds (`router.rebalance` in the deployment)."""
        while True:
            await asyncio.sleep(self.config.rebalance.interval_seconds)
            try:
                moves = await self.router.rebalance()
            except Exception:  # a bad round must not end the loop
                log.exception("rebalancing round failed")
                continue
            for move in moves:
                log.info("moved %s from %s to %s", move.request_id, move.source, move.target)

    async def stop(self) -> None:
        """Stop serving; in-flight streams are cancelled."""
        if self._http is not None:
            await self._http.close()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._fleet is not None:
            await self._fleet.stop(grace=1.0)
        await self.feed.close()
        tasks = [*self._tasks, *self._removals]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.tracing.enabled:
            await asyncio.to_thread(self.tracing.shutdown)  # flushes queued spans
        await self.transport.close()
        self.router.preparing.close()
