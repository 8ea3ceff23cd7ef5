"""NetworkPolicies: each port of a deployment admits only who needs it.

Why: a worker's gRPC port serves prompts, Redis holds KV blocks that reveal them, and the
router's fleet port decides who receives users' prompts; none should be reachable from every
pod of the cluster. So, per deployment:

- workers (Ray head and worker pods): every port from the deployment's own Ray pods (GCS,
  object transfer, the supervisor's actors) and its router; the metrics port (counts, never
  prompts) also from the metrics peers (`spec.network.metricsFrom`, default: Prometheus pods
  labelled `app.kubernetes.io/name=prometheus` in the same namespace);
- router: the fleet port from the deployment's Ray pods only (where workers run); the client
  ports (HTTP, gRPC) from the client peers (`spec.network.clientsFrom`, default: anyone —
  clients still need an API key); when those are restricted, the HTTP port (which also serves
  /metrics and the admin API) additionally from the metrics peers and the operator itself;
- cache (Redis): from the deployment's Ray pods only.

Peers left unset in the spec come from the operator's settings (the chart's `networkPolicy`
values). Requires a CNI that enforces NetworkPolicy (on one that does not, these are inert;
docs/testbed.md says how the test bed enforces them).
"""

from __future__ import annotations

from typing import Any

from mainsail.operator.naming import LABEL_COMPONENT, LABEL_DEPLOYMENT, Owner, child_metadata
from mainsail.operator.naming import child_name as _child_name
from mainsail.operator.settings import OperatorSettings
from mainsail.spec.deployment import ModelDeploymentSpec
from mainsail.spec.network import Peer
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


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def _rule(ports: list[dict[str, Any]], peers: list[Peer]) -> dict[str, Any]:
    """An ingress rule on ``ports``; no peers means from anywhere (no `from`)."""
    rule: dict[str, Any] = {"ports": ports}
    if peers:
        rule["from"] = [peer.render() for peer in peers]
    return rule


def _policy(owner: Owner, suffix: str, components: tuple[str, ...], rules: list[Any]) -> Any:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(owner, _child_name(owner, suffix), COMPONENT),
        "spec": {
            "podSelector": _pods(owner, components)["podSelector"],
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def network_policies(
    owner: Owner, spec: ModelDeploymentSpec, settings: OperatorSettings, runs_cache: bool
) -> list[dict[str, Any]]:
    """The workers' and the router's policies, and the cache's when the operator runs one."""
    network = spec.network
    clients = settings.clients_from if network.clients_from is None else network.clients_from
    metrics = settings.metrics_from if network.metrics_from is None else network.metrics_from
    router = spec.router
    router_rules = [
        {"ports": _tcp(router.fleet_port), "from": [_pods(owner, RAY_COMPONENTS)]},
        _rule(_tcp(router.http_port, router.grpc_port), clients),
    ]
    if clients:
        # /metrics, the operator's status reads and drains live on the HTTP port too (metrics
        # peers "anyone" leave that port open to anyone).
        operator = [settings.operator_peer] if settings.operator_peer is not None else []
        router_rules.append(_rule(_tcp(router.http_port), [*metrics, *operator] if metrics else []))
    policies = [
        _policy(
            owner,
            "workers",
            RAY_COMPONENTS,
            [
                {"from": [_pods(owner, (*RAY_COMPONENTS, "router"))]},
                _rule(_tcp(WORKER_METRICS_PORT), metrics),
            ],
        ),
        _policy(owner, "router", ("router",), router_rules),
    ]
    if runs_cache:
        policies.append(
            _policy(owner, "cache", ("cache",), [{"from": [_pods(owner, RAY_COMPONENTS)]}])
        )
    return policies
