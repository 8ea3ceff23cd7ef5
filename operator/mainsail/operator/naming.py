"""Names, labels and owner references shared by every child of a `ModelDeployment`.

Why one module: the planner finds a deployment's children by these labels, status finds the
worker pods by them, and `kubectl get -l mainsail.dev/deployment=x` is how users look; they
must not drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mainsail.spec.deployment import API_GROUP, API_VERSION, KIND

MD_API_VERSION = f"{API_GROUP}/{API_VERSION}"
MANAGED_BY = "mainsail-operator"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_DEPLOYMENT = f"{API_GROUP}/deployment"
LABEL_ROLE = f"{API_GROUP}/role"
ANNOTATION_CONFIG_HASH = f"{API_GROUP}/config-hash"
ANNOTATION_DECLARED_REPLICAS = f"{API_GROUP}/declared-replicas"


@dataclass(frozen=True)
class Owner:
    """The identity of the `ModelDeployment` being reconciled."""

    name: str
    namespace: str
    uid: str
    generation: int = 0

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Owner:
        """From a ModelDeployment object as the API server returns it."""
        meta = body.get("metadata") or {}
        for key in ("name", "namespace", "uid"):
            if not meta.get(key):
                raise ValueError(f"ModelDeployment metadata lacks {key}")
        return cls(meta["name"], meta["namespace"], meta["uid"], int(meta.get("generation", 0)))


def child_name(owner: Owner, suffix: str | None = None) -> str:
    """`<deployment>` or `<deployment>-<suffix>`."""
    return owner.name if suffix is None else f"{owner.name}-{suffix}"


def labels(owner: Owner, component: str, role: str | None = None) -> dict[str, str]:
    """Labels of a child (and of the pods it makes): selectable by deployment and role."""
    out = {
        LABEL_NAME: "mainsail",
        LABEL_INSTANCE: owner.name,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PART_OF: "mainsail",
        LABEL_DEPLOYMENT: owner.name,
    }
    if role is not None:
        out[LABEL_ROLE] = role
    return out


def selector_labels(owner: Owner, component: str, role: str | None = None) -> dict[str, str]:
    """The stable subset used in immutable selectors (Deployment, StatefulSet, Service)."""
    out = {LABEL_INSTANCE: owner.name, LABEL_COMPONENT: component, LABEL_DEPLOYMENT: owner.name}
    if role is not None:
        out[LABEL_ROLE] = role
    return out


def owner_reference(owner: Owner) -> dict[str, Any]:
    """Controller reference: garbage collection removes children with their deployment."""
    return {
        "apiVersion": MD_API_VERSION,
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(
    owner: Owner,
    name: str,
    component: str,
    role: str | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Metadata of a child object: name, namespace, labels, owner reference."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, component, role),
        "ownerReferences": [owner_reference(owner)],
    }
    if annotations:
        meta["annotations"] = annotations
    return meta


def selector_string(selector: dict[str, str]) -> str:
    """`k=v,k=v` in key order, as `/scale` and `kubectl -l` take it."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
