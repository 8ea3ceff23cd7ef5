"""Who may connect to a deployment's router and workers: NetworkPolicy peers, typed once.

Why here (the spec, not the operator): the same peer lists are written in a ModelDeployment
(`spec.network`), in the chart's values (`networkPolicy.*`, the operator's defaults for every
deployment) and rendered into NetworkPolicies by the operator, and all three must mean the
same thing. A peer is a Kubernetes `NetworkPolicyPeer` restricted to what is unambiguous:
`podSelector` and `namespaceSelector` with `matchLabels`, or an `ipBlock`.

Semantics (Kubernetes'): a peer with only `podSelector` selects pods in the deployment's own
namespace; with `namespaceSelector` (and optionally `podSelector`) pods in the matching
namespaces (`{}` = every namespace); `ipBlock` a CIDR (for clients outside the cluster's pod
network, e.g. a load balancer's source range). An EMPTY LIST means "from anywhere", as an
ingress rule without `from` does in Kubernetes.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import Field, field_validator, model_validator

from mainsail.spec.spec_model import SpecModel

PROMETHEUS_LABELS = {"app.kubernetes.io/name": "prometheus"}
"""The label the Prometheus Operator (kube-prometheus-stack) puts on its Prometheus pods."""


class LabelSelector(SpecModel):
    """`matchLabels` only; `{}` selects everything."""

    match_labels: dict[str, str] = Field(default_factory=dict)


class IPBlock(SpecModel):
    """A CIDR, minus some sub-ranges."""

    cidr: str = Field(..., min_length=1, description="e.g. 10.0.0.0/8")
    except_: list[str] = Field(default_factory=list, alias="except")

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        ipaddress.ip_network(value, strict=False)  # ValueError names the bad value
        return value


class Peer(SpecModel):
    """One source allowed by a NetworkPolicy rule (a Kubernetes `NetworkPolicyPeer`)."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Peer:
        selects = self.pod_selector is not None or self.namespace_selector is not None
        if selects == (self.ip_block is not None):
            raise ValueError("a peer sets ipBlock, or podSelector and/or namespaceSelector")
        return self

    def render(self) -> dict[str, Any]:
        """The peer as it goes into a NetworkPolicy (no empty `except`: the API server drops
        it, and the operator's plan would see a difference on every pass)."""
        out: dict[str, Any] = self.model_dump(by_alias=True, exclude_none=True, mode="json")
        if "ipBlock" in out and not out["ipBlock"]["except"]:
            del out["ipBlock"]["except"]
        return out


def default_metrics_peers() -> list[Peer]:
    """Prometheus pods (by the Prometheus Operator's label) in the deployment's namespace."""
    return [Peer(pod_selector=LabelSelector(match_labels=PROMETHEUS_LABELS))]


class NetworkSettings(SpecModel):
    """Who may reach the deployment; unset fields take the operator's defaults (the chart's
    `networkPolicy` values). Worker pods and Redis are never open beyond the deployment's own
    router and Ray pods, whatever is set here."""

    clients_from: list[Peer] | None = Field(
        None,
        description="Who may reach the router's client ports (httpPort, grpcPort); empty list: "
        "anyone (clients still need an API key). Unset: the operator's default.",
    )
    metrics_from: list[Peer] | None = Field(
        None,
        description="Who may scrape the workers' metrics port (and the router's /metrics when "
        "clientsFrom is restricted); empty list: anyone. Unset: the operator's default "
        "(Prometheus pods, label app.kubernetes.io/name=prometheus, in the same namespace).",
    )
