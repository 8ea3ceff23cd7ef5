"""One worker replica: engine + gRPC Worker service + registration, in one event loop.

`WorkerHost` is plain Python so it runs the same inside a Ray actor (`ray_actor.py`, the
normal way), in a KubeRay worker pod, or in a test process. Loading the checkpoint happens
in a thread so the actor stays responsive while a large model loads. The deployment's LoRA
adapters are resolved here: a ``path`` is used as is, a ``generateRank`` adapter is generated
for the checkpoint (cached, deterministic from its name, so every replica gets the same one).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.spec.adapters import Adapter
from mainsail.spec.engine_settings import EngineSettings
from mainsail.spec.keepalive import server_options
from mainsail.spec.model_source import ModelSource
from mainsail.spec.tracing import ProviderFactory, Tracing
from mainsail.spec.worker_auth import WorkerCredential, token_guard
from mainsail.workers.engine import AsyncEngine, Engine, EngineConfig
from mainsail.workers.expert_scaling import ExpertScaling
from mainsail.workers.fake_engine import FakeEngine
from mainsail.workers.fleet_registration import FleetRegistrar
from mainsail.workers.kv_publisher import KVEventHub
from mainsail.workers.kvtier import RedisTierFactory
from mainsail.workers.metrics_endpoint import CacheConfig, MetricsServer, serve_worker_metrics
from mainsail.workers.migration import KVMigrator
from mainsail.workers.router_discovery import RouterDiscovery, discovery_from
from mainsail.workers.service import RequestLimits, ServingEngine, WorkerService

if TYPE_CHECKING:
    from mainsail.workers.tracing import WorkerTracing

log = logging.getLogger(__name__)


class WorkerSpec(BaseModel):
    """What one worker replica needs to start; built by the launcher from the deployment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    worker_id: str = Field(..., min_length=1)
    role: str = Field("unified", pattern=r"^(unified|prefill|decode|encode)$")
    model_name: str = Field(..., min_length=1, description="Served name the router expects.")
    model_dir: Path
    engine: EngineSettings = EngineSettings()
    router_address: str | None = Field(
        None, description="host:port of the router's fleet port (where workers register)."
    )
    router_addresses: tuple[str, ...] = Field(
        (),
        description="More routers' host:port (replicas of one deployment, `mainsail up "
        "--routers N`): the worker registers with each of them and `router_address`.",
    )
    router_dns: str | None = Field(
        None,
        description="host:port of a headless Service whose A records are the router replicas "
        "(on a cluster): resolved every `router_discovery_period` seconds, the worker "
        "registers with every address found. Replaces the static addresses when set.",
    )
    router_discovery_period: float = Field(
        5.0, gt=0, le=300, description="Seconds between two resolutions of `router_dns`."
    )
    host: str = Field("127.0.0.1", description="Address the Worker service binds to.")
    advertise_host: str | None = Field(
        None,
        description="Address the router should dial (registered); default `host`. On a "
        "cluster the worker binds 0.0.0.0 and advertises its pod's IP.",
    )
    generate: ModelSource | None = Field(
        None,
        description="When this source has `generate` set, the checkpoint is generated into "
        "`model_dir` at start if it is not there yet (deterministic from seed and size, so "
        "every pod of a cluster and the router get the same weights and tokenizer).",
    )
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port.")
    metrics_port: int | None = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the worker's Prometheus /metrics (plain HTTP, bound to `host`, "
        "advertised at registration); 0 picks a free port, null serves none.",
    )
    adapters: tuple[Adapter, ...] = Field(
        (),
        description="LoRA adapters to load and advertise; a bare name (no source) is only "
        "valid with `fake_engine`.",
    )
    torch_threads: int = Field(1, ge=1, le=256, description="Intra-op threads for the engine.")
    fake_engine: bool = Field(
        False, description="Serve `FakeEngine` (instant tokens) instead of the model: benchmarks."
    )
    redis_url: str | None = Field(
        None,
        pattern=r"^(rediss?|unix)://",
        description="The cache pool's Redis: KV blocks are written to and fetched from it. "
        "Several URLs, comma-separated (the pool's replicas): blocks spread over all of them "
        "by consistent hashing; a server that is down reads as a miss.",
    )
    tracing: Tracing = Field(
        Tracing(), description="OpenTelemetry export (the deployment's `tracing`); off by default."
    )

    @field_validator("adapters", mode="before")
    @classmethod
    def _names_as_adapters(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple({"name": v} if isinstance(v, str) else v for v in value)
        return value

    @property
    def has_routers(self) -> bool:
        """Whether this worker registers with any router."""
        return bool(self.router_dns or self.router_address or self.router_addresses)

    def router_discovery(self) -> RouterDiscovery:
        """The routers this worker registers with (`router_discovery`)."""
        static = [a for a in (self.router_address, *self.router_addresses) if a]
        return discovery_from(static, self.router_dns, self.router_discovery_period)

    @property
    def adapter_names(self) -> tuple[str, ...]:
        """Adapter names, as the router sees them."""
        return tuple(a.name for a in self.adapters)

    def adapter_dirs(self) -> dict[str, Path]:
        """Each adapter's PEFT directory: its ``path``, or one generated for ``model_dir``."""
        from mainsail.workers.checkpoint import ensure_adapter

        dirs: dict[str, Path] = {}
        for a in self.adapters:
            if a.path is not None:
                dirs[a.name] = Path(a.path)
            elif a.generate_rank is not None:
                dirs[a.name] = ensure_adapter(self.model_dir, a.name, a.generate_rank)
            else:
                raise ValueError(f"adapter {a.name!r} has neither a path nor a generateRank")
        return dirs


class WorkerHost:
    """Starts and stops one worker replica."""

    def __init__(
        self,
        spec: WorkerSpec,
        credential: WorkerCredential | None = None,
        discovery: RouterDiscovery | None = None,
        tracer_provider_factory: ProviderFactory | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.spec = spec
        # Called (on the engine thread) when the engine cannot continue, e.g. a rank of a
        # sharded model died; the Ray actor ends its process so the worker counts as dead.
        self.on_fatal = on_fatal
        self.discovery = discovery
        self._tracer_provider_factory = tracer_provider_factory  # None: OTLP export
        # The worker plane's credential comes from the environment (a Secret on a cluster,
        # generated by `mainsail up` locally), never from the spec, which Ray stores in plain.
        self.credential = credential if credential is not None else WorkerCredential.from_env()
        self.engine: ServingEngine | None = None
        self.hub: KVEventHub | None = None
        self.registrar: FleetRegistrar | None = None
        self.service: WorkerService | None = None
        self.migrator: KVMigrator | None = None
        self._server: grpc.aio.Server | None = None
        self.metrics_server: MetricsServer | None = None
        self.tracing: WorkerTracing | None = None
        self._registration: asyncio.Task[None] | None = None
        self.experts: ExpertScaling | None = None  # sharded MoE: degree, expert load
        self._experts_task: asyncio.Task[None] | None = None
        self.address = ""

    async def start(self) -> str:
        """Load the model, serve the Worker API, register; returns the service address."""
        spec = self.spec
        engine: ServingEngine
        limits: RequestLimits | None = None
        migrator: KVMigrator | None = None
        source = spec.generate
        if source is not None and source.generate is not None and not spec.fake_engine:
            from mainsail.workers.checkpoint import generate_checkpoint

            await asyncio.to_thread(
                generate_checkpoint,
                source.generate,
                spec.model_dir,
                seed=source.seed,
                size=source.size,
            )
        if spec.fake_engine:
            fake = FakeEngine()
            engine, snapshot = fake, fake.kv_snapshot
            tier_snapshot = None
        else:
            import torch

            torch.set_num_threads(spec.torch_threads)
            tier = RedisTierFactory(spec.redis_url) if spec.redis_url else None
            adapters = await asyncio.to_thread(spec.adapter_dirs)
            config = EngineConfig.from_engine_settings(
                spec.engine,
                device=EngineConfig.resolve_device(spec.engine.device),
                kv_tier=tier,
                adapters=adapters,
            )
            if spec.role == "decode" and tier is not None:
                # A decode worker's prompts were just prefilled elsewhere and published to the
                # tier: fetching them is the point of disaggregation, whatever the cost model
                # learned from local prefills.
                config = dataclasses.replace(config, kv_tier_fetch="always")
            real = AsyncEngine(
                await asyncio.to_thread(Engine, spec.model_dir, config), self.on_fatal
            )
            engine, snapshot = real, real.kv_snapshot
            tier_snapshot = real.kv_tier_snapshot
            migrator = self.migrator = KVMigrator(real, self.credential)
            if ExpertScaling.applies(real.engine):
                self.experts = ExpertScaling(real)
                self._experts_task = asyncio.get_running_loop().create_task(self.experts.run())
            limits = RequestLimits(
                vocab_size=real.engine.model_config.vocab_size,
                max_model_len=config.max_model_len,
            )
        self.engine = engine
        if spec.metrics_port is not None:
            cache = _cache_config(spec, engine)
            self.metrics_server = serve_worker_metrics(
                spec.model_name, engine.metrics, cache, spec.host, spec.metrics_port
            )
        self.hub = KVEventHub(
            spec.worker_id, engine.drain_kv_events, snapshot, tier_snapshot=tier_snapshot
        )
        self.hub.start()
        if spec.tracing.enabled:
            from mainsail.workers.tracing import WorkerTracing

            self.tracing = WorkerTracing(
                spec.tracing,
                self._tracer_provider_factory,
                worker_id=spec.worker_id,
                role=spec.role,
                model=spec.model_name,
                block_size=spec.engine.block_size,
            )
        service = WorkerService(
            spec.worker_id,
            self.engine,
            self.hub,
            max_num_seqs=spec.engine.max_num_seqs,
            adapters=spec.adapter_names,
            limits=limits,
            migrator=migrator,
            tracing=self.tracing,
            experts=self.experts,
        )
        self.service = service
        server = grpc.aio.server(
            interceptors=[token_guard(self.credential)], options=server_options()
        )
        pb_grpc.add_WorkerServicer_to_server(service, server)
        bind = f"{spec.host}:{spec.port}"
        tls = self.credential.server_credentials()
        port = server.add_secure_port(bind, tls) if tls else server.add_insecure_port(bind)
        await server.start()
        self._server = server
        self.address = f"{spec.advertise_host or spec.host}:{port}"
        discovery = self.discovery
        if discovery is None and spec.has_routers:
            discovery = spec.router_discovery()
        if discovery is not None:
            kv = spec.engine.kv_hash()
            info = pb.WorkerInfo(
                worker_id=spec.worker_id,
                address=self.address,
                role=spec.role,
                model=spec.model_name,
                max_model_len=spec.engine.max_model_len,
                max_num_seqs=spec.engine.max_num_seqs,
                kv_hash=pb.KVHashParams(
                    block_size=kv.block_size, hash_seed=kv.hash_seed, algorithm=kv.algorithm
                ),
                adapters=list(spec.adapter_names),
                metrics_address=self.metrics_address,
            )
            self.registrar = FleetRegistrar(
                discovery,
                info,
                service.load_snapshot,
                in_flight=service.in_flight_from,
                credential=self.credential,
            )
            self._registration = asyncio.get_running_loop().create_task(self.registrar.run())
        log.info("worker %s serving on %s", spec.worker_id, self.address)
        return self.address

    @property
    def metrics_address(self) -> str:
        """host:port of this worker's /metrics ("" when it serves none)."""
        if self.metrics_server is None:
            return ""
        return f"{self.spec.advertise_host or self.spec.host}:{self.metrics_server.port}"

    async def wait_registered(self, timeout: float = 30.0, *, every: bool = True) -> None:
        """Return once every discovered router (``every``; else one) accepted this worker;
        raise `RegistrationRefused` if a router refused it, `TimeoutError` after ``timeout``."""
        if self.registrar is None or self._registration is None:
            raise RuntimeError("worker has no router to register with")
        waiter = asyncio.ensure_future(self.registrar.wait_registered(timeout, every=every))
        done, _ = await asyncio.wait(
            {waiter, self._registration}, timeout=timeout + 1, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter in done:
            waiter.result()
            return
        waiter.cancel()
        if self._registration in done:
            self._registration.result()  # the discovery loop died: say why
        raise TimeoutError(f"worker {self.spec.worker_id} not registered after {timeout} s")

    async def ping(self) -> str:
        """Liveness probe used by the launcher."""
        return self.address

    async def stop(self) -> None:
        """Deregister, stop serving and stop the engine."""
        if self._experts_task is not None:
            self._experts_task.cancel()
            with contextlib.suppress(BaseException):
                await self._experts_task
        if self.experts is not None:
            await self.experts.close()
        if self._registration is not None:
            self._registration.cancel()
            with contextlib.suppress(BaseException):
                await self._registration
        if self.registrar is not None:
            await self.registrar.deregister()
        if self._server is not None:
            await self._server.stop(grace=0.5)
        if self.hub is not None:
            await self.hub.stop()
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.stop)
        if isinstance(self.engine, AsyncEngine):
            await self.engine.shutdown()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # flushes queued spans


def _cache_config(spec: WorkerSpec, engine: ServingEngine) -> CacheConfig:
    """Block size, block count and LoRA slots of the engine serving ``spec``."""
    if isinstance(engine, AsyncEngine):
        config = engine.engine.config
        return CacheConfig(config.block_size, config.total_kv_blocks, len(config.adapters))
    total = engine.metrics().kv_blocks_total  # the fake engine: no KV, only its totals
    return CacheConfig(spec.engine.block_size, total, len(spec.adapters))
