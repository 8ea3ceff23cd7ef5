"""`WorkerSpec`: what one worker replica needs to start, as the launchers build it.

Why apart from `host.py`: the launchers (`mainsail up`, the supervisor on a RayCluster head,
which the operator's tests also import) build and validate specs without running an engine,
so this module must not import torch or the engine; `WorkerHost` (in `host.py`) does, in the
process that serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mainsail.spec.adapters import Adapter
from mainsail.spec.engine_settings import EngineSettings
from mainsail.spec.model_source import ModelSource
from mainsail.spec.tracing import Tracing
from mainsail.workers.router_discovery import RouterDiscovery, discovery_from


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
