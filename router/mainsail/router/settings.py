"""Router settings: one frozen, validated model, derived from the `ModelDeployment`.

On a cluster the operator writes these into the router's ConfigMap; locally `mainsail up`
passes the same JSON. The KV hashing parameters come from the deployment's engine settings,
the one source that workers read too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mainsail.spec.admission import Admission, FlowControl
from mainsail.spec.deployment import ModelDeployment
from mainsail.spec.kvhash import KVHashConfig
from mainsail.spec.rebalance import Rebalance
from mainsail.spec.request_contract import DEFAULT_MAX_TOKENS
from mainsail.spec.routing_profile import RoutingProfile
from mainsail.spec.slo import SLO
from mainsail.spec.tracing import Tracing

FLAT_FLOW_KEYS = frozenset({"max_per_band", "max_per_tenant"})
"""Keys of `FlowControl` also read at the top level of a `RouterConfig` (see `flow`)."""


class RouterConfig(BaseModel):
    """Everything the router process needs; unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str = Field(..., min_length=1, description="Served model name.")
    model_dir: Path = Field(
        ..., description="Checkpoint directory (the router reads its tokenizer)."
    )
    adapters: tuple[str, ...] = Field((), description="LoRA adapters the deployment serves.")
    max_model_len: int = Field(2048, ge=16, description="Longest context in tokens.")
    kv_hash: KVHashConfig = KVHashConfig()
    profile: RoutingProfile = RoutingProfile()
    slo: SLO = SLO()
    host: str = Field("127.0.0.1", description="Address both fronts bind to.")
    http_port: int = Field(8000, ge=0, le=65535, description="0 picks a free port.")
    grpc_port: int = Field(50051, ge=0, le=65535, description="0 picks a free port.")
    fleet_host: str = Field(
        "127.0.0.1",
        description="Address the fleet port binds to (workers' `Registry`; loopback locally, "
        "all interfaces on a cluster where a NetworkPolicy admits only worker pods).",
    )
    fleet_port: int = Field(
        50052,
        ge=0,
        le=65535,
        description="Workers register here (`Registry`: worker token, mutual TLS when the "
        "worker plane has TLS material); never served on the clients' ports. 0: a free port.",
    )
    max_queue: int = Field(4096, ge=1, description="Requests waiting for a worker before 429.")
    flow: FlowControl = Field(
        FlowControl(),
        description="Bounds of the flow queue per priority band and per tenant "
        "(`spec.router.flow`); `max_queue` bounds them all together.",
    )
    admission: Admission = Admission()
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest HTTP body.")
    max_head_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest HTTP request line plus headers (431 beyond it).",
    )
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a client may take to send a request's headers (408)."
    )
    body_timeout: float = Field(
        60.0, gt=0, description="Seconds a client may take to send a request's body (408)."
    )
    max_connections: int = Field(
        4096, ge=1, description="Open HTTP connections; more are answered 503 and closed."
    )
    prepare_threads: int = Field(
        2, ge=1, le=64, description="Threads tokenizing large prompts off the event loop."
    )
    max_preparing: int = Field(
        64, ge=1, description="Large prompts being tokenized or queued for it (429 beyond)."
    )
    inline_prepare_chars: int = Field(
        8192,
        ge=0,
        description="Prompts up to this many characters are tokenized inline (cheaper than "
        "a thread hop); longer ones on the preparation threads.",
    )
    tenant_header: str = Field(
        "",
        pattern=r"^[A-Za-z0-9-]*$",
        description="Header (gRPC metadata key) an upstream gateway sets to the caller's "
        "tenant; empty: the tenant is the caller's API key. Prefix caches are per tenant.",
    )
    dispatch_timeout: float = Field(
        30.0, gt=0, description="Seconds a request may wait for a worker before 503."
    )
    cold_start_timeout: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="Seconds a new request is held while no worker is registered at all (a "
        "pool scaled to zero being woken by that very request: the autoscaler reads held "
        "requests as demand) before 503; at least `dispatch_timeout`.",
    )
    default_max_tokens: int = Field(
        DEFAULT_MAX_TOKENS, ge=1, description="max_tokens when a request has none."
    )
    heartbeat_interval: float = Field(1.0, gt=0, description="Seconds between worker heartbeats.")
    worker_expiry: float = Field(
        5.0, gt=0, description="Seconds of silence after which a worker is dropped."
    )
    kv_index_max_blocks: int = Field(1_000_000, ge=1, description="Cap on KV index entries.")
    request_role: str = Field(
        "unified",
        pattern=r"^(unified|decode)$",
        description="Role of the workers that run whole requests (or, disaggregated, their "
        "decode half): `unified`, or `decode` for a prefill/decode deployment.",
    )
    disaggregated: bool = Field(
        False,
        description="Prefill/decode deployment: each request's prompt runs on a prefill worker "
        "(first token, KV published to the shared tier), the rest on a decode worker that "
        "fetches that KV. Falls back to whole requests on decode workers when no prefill "
        "worker is registered.",
    )
    max_attempts: int = Field(
        3, ge=1, le=10, description="Workers tried for a request that fails before its first token."
    )
    max_resumes: int = Field(
        2,
        ge=0,
        le=10,
        description="Times a request whose worker fails after its first token is moved to "
        "another worker and continued (0: end it with finish_reason `error`).",
    )
    rebalance: Rebalance = Rebalance()
    kv_migration: bool = Field(
        True,
        description="Moves of streaming requests (drain, migrate, rebalancing) copy the "
        "request's KV to the target worker while it keeps decoding, pausing it only for the "
        "last blocks; false (or when that fails): the target recomputes the context.",
    )
    resume_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds such a request waits for another worker before it ends with an error.",
    )
    tracing: Tracing = Field(
        Tracing(), description="OpenTelemetry export (the deployment's `tracing`); off by default."
    )

    @model_validator(mode="before")
    @classmethod
    def _flat_flow_keys(cls, data: Any) -> Any:
        """`max_per_band` and `max_per_tenant` beside the other keys (their names before
        `flow` held them) are still read, into `flow`; together with `flow` they are an
        error, so a value is never silently dropped."""
        if not isinstance(data, dict) or not FLAT_FLOW_KEYS & data.keys():
            return data
        if "flow" in data:
            raise ValueError("flow: give max_per_band and max_per_tenant inside flow only")
        data = dict(data)
        data["flow"] = {key: data.pop(key) for key in FLAT_FLOW_KEYS if key in data}
        return data

    @model_validator(mode="after")
    def _pool_fits(self) -> RouterConfig:
        if self.max_preparing < self.prepare_threads:
            raise ValueError("max_preparing must be >= prepare_threads")
        return self

    @classmethod
    def from_deployment(
        cls, deployment: ModelDeployment, model_dir: Path, **overrides: object
    ) -> RouterConfig:
        """Settings for the router of ``deployment`` (ports and host may be overridden)."""
        spec = deployment.spec
        values: dict[str, object] = {
            "model_name": spec.model.name,
            "model_dir": model_dir,
            "adapters": tuple(a.name for a in spec.adapters),
            "max_model_len": spec.engine.max_model_len,
            "kv_hash": spec.engine.kv_hash(),
            "profile": spec.router.profile,
            "slo": spec.slo,
            "http_port": spec.router.http_port,
            "grpc_port": spec.router.grpc_port,
            "fleet_port": spec.router.fleet_port,
            "max_queue": spec.router.max_queue,
            "flow": spec.router.flow,
            "admission": spec.router.admission,
            "cold_start_timeout": float(spec.router.cold_start_timeout_seconds),
            "kv_index_max_blocks": spec.router.kv_index_max_blocks,
            "rebalance": spec.router.rebalance,
            "request_role": "unified" if spec.pools.unified is not None else "decode",
            "disaggregated": spec.pools.unified is None and spec.pools.prefill is not None,
            "tracing": spec.tracing,
        }
        values.update(overrides)
        return cls.model_validate(values)
