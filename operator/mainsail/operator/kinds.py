"""Every Kubernetes kind the operator touches, in one table: what it does with each.

Why one table: the REST paths (`kube.py`), what a reconcile pass lists as its children
(`reconciler.py`), which watches kopf opens (`handlers.py`) and what the chart's ClusterRole
grants (`charts/mainsail/templates/rbac.yaml`, checked against this table by
tests/unit/test_operator_kinds.py) must agree; a kind added in one place and not the others
is a pass that cannot list it or an RBAC 403 at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mainsail.spec.crd import SERVING_POOL_KIND
from mainsail.spec.deployment import API_GROUP, API_VERSION, KIND


class Use(Enum):
    """What the operator does with a kind."""

    OWNER = "owner"  # the ModelDeployment: read, watch, patch its status
    CHILD = "child"  # created, updated and deleted per deployment; watched
    READ = "read"  # read only (worker pods for readiness, router EndpointSlices)
    ISSUED = "issued"  # written and read back by name, never listed or watched (Secrets)


@dataclass(frozen=True)
class ManagedKind:
    """One kind: its API version, name, REST plural and use."""

    api_version: str
    kind: str
    plural: str
    use: Use
    status: bool = False  # the operator writes its status subresource

    @property
    def group(self) -> str:
        """API group ("" for the core group)."""
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


_MAINSAIL = f"{API_GROUP}/{API_VERSION}"
MODEL_DEPLOYMENT = ManagedKind(_MAINSAIL, KIND, "modeldeployments", Use.OWNER, status=True)
SERVING_POOL = ManagedKind(_MAINSAIL, SERVING_POOL_KIND, "servingpools", Use.CHILD, status=True)
POD = ManagedKind("v1", "Pod", "pods", Use.READ)
ENDPOINT_SLICE = ManagedKind("discovery.k8s.io/v1", "EndpointSlice", "endpointslices", Use.READ)
"""The router-peers Service's slices: every router replica's address, so status and the
autoscaler read each replica (`router_replicas`)."""

SECRET = ManagedKind("v1", "Secret", "secrets", Use.ISSUED)
"""The credentials Secret the operator issues per deployment (`desired_secrets`): fetched by
its name, so the operator needs no right to list or watch Secrets (it cannot enumerate the
cluster's credentials)."""

CHILDREN: tuple[ManagedKind, ...] = (
    ManagedKind("v1", "ConfigMap", "configmaps", Use.CHILD),
    ManagedKind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", Use.CHILD),
    ManagedKind("v1", "Service", "services", Use.CHILD),
    ManagedKind("apps/v1", "StatefulSet", "statefulsets", Use.CHILD),
    SERVING_POOL,
    ManagedKind("ray.io/v1", "RayCluster", "rayclusters", Use.CHILD),
    ManagedKind("apps/v1", "Deployment", "deployments", Use.CHILD),
    ManagedKind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", Use.CHILD),
)
"""The kinds a deployment's children are, in the order a pass lists them."""

ALL: tuple[ManagedKind, ...] = (MODEL_DEPLOYMENT, SECRET, *CHILDREN, POD, ENDPOINT_SLICE)

PLURALS: dict[tuple[str, str], str] = {(k.api_version, k.kind): k.plural for k in ALL}
"""(apiVersion, kind) -> REST plural, for every kind the operator reads or writes."""
