"""Operator settings: images, their pull policies and timing, validated once at start-up.

Read from `MAINSAIL_OPERATOR_*` environment variables (the Helm chart sets them from
`values.yaml`), so a running operator never consults files or globals for these.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from mainsail.spec.network import Peer, default_metrics_peers

ENV_PREFIX = "MAINSAIL_OPERATOR_"

PullPolicy = Literal["Always", "IfNotPresent", "Never"]
"""A container's `imagePullPolicy`. `IfNotPresent` suits tagged releases; a test bed that
imported its images into the node's runtime uses `Never`."""


class OperatorSettings(BaseModel):
    """What the operator stamps into children, and how often it re-checks them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    router_image: str = Field(
        "ghcr.io/mainsail-dev/mainsail-router:0.1.0", min_length=1, description="Router image."
    )
    worker_image: str = Field(
        "ghcr.io/mainsail-dev/mainsail-worker:0.1.0",
        min_length=1,
        description="Ray head and worker image (Ray 2.60 plus the mainsail workers).",
    )
    redis_image: str = Field(
        "valkey/valkey:8.1-alpine", min_length=1, description="Cache pool image (Redis protocol)."
    )
    router_pull_policy: PullPolicy = Field("IfNotPresent", description="Router image pulls.")
    worker_pull_policy: PullPolicy = Field(
        "IfNotPresent", description="Ray head, worker and model init container image pulls."
    )
    redis_pull_policy: PullPolicy = Field("IfNotPresent", description="Cache image pulls.")
    ray_version: str = Field("2.60.0", description="Ray version KubeRay is told the image runs.")
    gpu_type_label: str = Field(
        "nvidia.com/gpu.product",
        min_length=1,
        description="Node label whose value a pool's `gpuType` must match (GPU feature "
        "discovery's label).",
    )
    field_manager: str = Field(
        "mainsail-operator", min_length=1, description="Server-side-apply field manager."
    )
    resync_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds between full re-checks of each deployment; drift of a child is "
        "usually caught earlier by its watch event.",
    )
    request_timeout_seconds: float = Field(
        30.0, gt=0, le=600, description="Timeout of one Kubernetes API call."
    )
    autoscale_seconds: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="Seconds between autoscaler passes over a deployment with an autoscaled "
        "pool (one scrape of its router per pass).",
    )
    router_metrics_url: str = Field(
        "http://{router}.{namespace}.svc:{port}/metrics",
        min_length=1,
        description="Where the autoscaler reads a deployment's load. Placeholders: {router} "
        "(the router Service's name), {namespace}, {port} (spec.router.httpPort).",
    )
    router_pod_metrics_url: str = Field(
        "http://{address}:{port}/metrics",
        min_length=1,
        description="Where status and the autoscaler read EACH router replica (one URL per "
        "serving pod of the `<name>-router-peers` EndpointSlices; the signals are merged, see "
        "mainsail.operator.signal_merge). Placeholders: {address} (the pod IP), {port} (the "
        "router's http port), {namespace}. Without slices router_metrics_url is read.",
    )

    router_admin_url: str = Field(
        "http://{router}.{namespace}.svc:{port}",
        min_length=1,
        description="Base URL of a deployment's router admin API (`POST /workers/<id>/drain` "
        "before a scale-down removes a worker's pod). Placeholders as in router_metrics_url.",
    )

    clients_from: list[Peer] = Field(
        default_factory=list,
        description="Default for `spec.network.clientsFrom`: who may reach a router's client "
        "ports (JSON list of NetworkPolicy peers; empty: anyone, clients still need a key).",
    )
    metrics_from: list[Peer] = Field(
        default_factory=default_metrics_peers,
        description="Default for `spec.network.metricsFrom`: who may scrape the workers' "
        "metrics port (JSON list of peers; empty: anyone). Default: Prometheus pods "
        "(app.kubernetes.io/name=prometheus) in the deployment's namespace.",
    )
    operator_peer: Peer | None = Field(
        None,
        description="This operator's pods as a peer (the chart sets it): admitted to the "
        "router's HTTP port (status, drains) when clientsFrom is restricted.",
    )

    @field_validator("clients_from", "metrics_from", "operator_peer", mode="before")
    @classmethod
    def _json(cls, value: object) -> object:
        """Environment variables carry these as JSON."""
        return json.loads(value) if isinstance(value, str) else value

    def pull_policy(self, image: str) -> PullPolicy | None:
        """The configured pull policy of a container running `image` (None: not ours)."""
        policies: dict[str, PullPolicy] = {
            self.redis_image: self.redis_pull_policy,
            self.worker_image: self.worker_pull_policy,
            self.router_image: self.router_pull_policy,
        }
        return policies.get(image)

    @field_validator("router_metrics_url", "router_admin_url")
    @classmethod
    def _placeholders(cls, url: str, info: ValidationInfo) -> str:
        try:
            url.format(router="r", namespace="n", port=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"{info.field_name}: only {{router}}, {{namespace}} and {{port}} may be used "
                f"({exc!r})"
            ) from exc
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{info.field_name} must be an http(s) URL")
        return url

    @field_validator("router_pod_metrics_url")
    @classmethod
    def _pod_placeholders(cls, url: str) -> str:
        try:
            url.format(address="a", namespace="n", port=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                "router_pod_metrics_url: only {address}, {namespace} and {port} may be used "
                f"({exc!r})"
            ) from exc
        if not url.startswith(("http://", "https://")):
            raise ValueError("router_pod_metrics_url must be an http(s) URL")
        return url

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        """Settings from `MAINSAIL_OPERATOR_<FIELD>` variables; unknown ones are errors."""
        env = os.environ if environ is None else environ
        values: dict[str, str] = {}
        for key, value in env.items():
            if not key.startswith(ENV_PREFIX):
                continue
            field = key[len(ENV_PREFIX) :].lower()
            if field not in cls.model_fields:
                raise ValueError(f"unknown operator setting {key}")
            values[field] = value
        return cls.model_validate(values)
