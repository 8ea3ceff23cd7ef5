"""`spec.router`: the global router's replicas, ports, credentials and limits, composed with its
routing profile, rebalancing, flow control and admission sections.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from mainsail.spec.admission import Admission, FlowControl
from mainsail.spec.rebalance import Rebalance
from mainsail.spec.routing_profile import RoutingProfile
from mainsail.spec.spec_model import SpecModel


class RouterAuth(SpecModel):
    """Credentials of the router, from a Secret in the deployment's namespace."""

    secret_name: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Secret with `apiKeys` (comma-separated client keys: `/v1/*` and gRPC then "
        "need `Authorization: Bearer <key>`) and/or `adminToken` (for `/workers`, "
        "`/requests/*`). Unset: the router is open, as on a laptop.",
    )


class RouterSettings(SpecModel):
    """The global router in front of the pools."""

    replicas: int = Field(1, ge=1, le=100)
    http_port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(50051, ge=1, le=65535)
    fleet_port: int = Field(
        50052,
        ge=1,
        le=65535,
        description="Where workers register with the router (the Registry, worker token and "
        "mutual TLS); not a client port: only the deployment's worker pods may reach it.",
    )
    profile: RoutingProfile = RoutingProfile()
    kv_index_max_blocks: int = Field(
        1_000_000, ge=1, description="Cap on the global KV index (block ids kept)."
    )
    max_queue: int = Field(
        4096, ge=1, description="Requests admitted but not yet dispatched before 429."
    )
    rebalance: Rebalance = Rebalance()
    auth: RouterAuth = RouterAuth()
    cold_start_timeout_seconds: int = Field(
        120,
        ge=1,
        le=3600,
        description="Seconds the router holds a request while no worker is registered (pools "
        "scaled to zero: the held request is the demand that wakes them) before answering 503.",
    )
    flow: FlowControl = FlowControl()
    admission: Admission = Admission()

    @model_validator(mode="after")
    def _distinct_ports(self) -> RouterSettings:
        if len({self.http_port, self.grpc_port, self.fleet_port}) < 3:
            raise ValueError("router: httpPort, grpcPort and fleetPort must differ")
        return self
