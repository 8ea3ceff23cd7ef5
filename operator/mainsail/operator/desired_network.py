"""NetworkPolicies: only the router (and Ray itself) reaches workers, only workers reach Redis.

Why: a worker's gRPC port serves prompts and a Redis holds KV blocks that reveal them; neither
should be reachable from every pod of the cluster. The router's own ports stay open (it is the
deployment's endpoint and checks client keys). Ray's pods of one deployment talk among
themselves (GCS, object transfer, the supervisor's actors), so the worker policy admits the
deployment's Ray pods and its router, and anyone on the workers' metrics port only (it serves
counts, never prompts: Prometheus scrapes it); the cache policy admits the deployment's Ray
pods only.
Requires a CNI that enforces NetworkPolicy (on one that does not, these are inert).
"""

from __future__ import annotations

from typing import Any

from mainsail.operator.naming import LABEL_COMPONENT, LABEL_DEPLOYMENT, Owner, child_metadata
from mainsail.operator.naming import child_name as _child_name
from mainsail.spec.worker_metrics import WORKER_METRICS_PORT

COMPONENT = "network"
RAY_COMPONENTS = ("head", "worker")


def _pods(owner: Owner, components: tuple[str, ...]) -> dict[str, Any]:
    return {
        "podSelector": {
            "matchLabels": {LABEL_DEPLOYMENT: owner.name},
            "matchExpressions": [
                {"key": LABEL_COMPONENT, "operator": "In", "values": list(components)}
            ],
        }
    }


def network_policies(owner: Owner, runs_cache: bool) -> list[dict[str, Any]]:
    """The workers' policy, and the cache's when the operator runs one."""
    policies = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": child_metadata(owner, _child_name(owner, "workers"), COMPONENT),
            "spec": {
                "podSelector": _pods(owner, RAY_COMPONENTS)["podSelector"],
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"from": [_pods(owner, (*RAY_COMPONENTS, "router"))]},
                    {"ports": [{"protocol": "TCP", "port": WORKER_METRICS_PORT}]},
                ],
            },
        }
    ]
    if runs_cache:
        policies.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": child_metadata(owner, _child_name(owner, "cache"), COMPONENT),
                "spec": {
                    "podSelector": _pods(owner, ("cache",))["podSelector"],
                    "policyTypes": ["Ingress"],
                    "ingress": [{"from": [_pods(owner, RAY_COMPONENTS)]}],
                },
            }
        )
    return policies
