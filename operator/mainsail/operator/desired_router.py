"""The router's Deployment, its Services and, with several replicas, its disruption budget.

The router reads the shared `config.json` (see `desired_config`), so its pods carry the config
hash as an annotation: editing routing, SLOs or KV settings in the spec rolls the router.

`spec.router.replicas` router pods are active-active: clients reach any of them through the
ClusterIP Service; workers register with every one of them, found through the headless
`<name>-router-peers` Service (one DNS A record per router pod, not-ready ones included so a
worker registers while a router starts: readiness only gates client traffic). Pods spread over
nodes and zones (`ScheduleAnyway`: a one-node cluster still runs them all), and with more than
one replica a PodDisruptionBudget keeps all but one serving through voluntary disruptions
(node drains, upgrades). One replica gets no budget: it would block every drain of its node.
"""

from __future__ import annotations

from typing import Any

from mainsail.operator.desired_config import (
    CONFIG_PATH,
    common_env,
    config_mount,
    config_volume,
    router_peers_name,
)
from mainsail.operator.desired_model import model_mounts as spec_model_mounts
from mainsail.operator.desired_model import model_volumes as spec_model_volumes
from mainsail.operator.desired_secrets import (
    client_auth_env,
    tls_mount,
    tls_volume,
    worker_plane_env,
)
from mainsail.operator.naming import (
    ANNOTATION_CONFIG_HASH,
    Owner,
    child_metadata,
    child_name,
    labels,
    selector_labels,
)
from mainsail.spec.config_document import MODEL_DIR_ENV
from mainsail.spec.deployment import ModelDeploymentSpec

COMPONENT = "router"


def router_name(owner: Owner) -> str:
    return child_name(owner, COMPONENT)


def router_metrics_url(template: str, owner: Owner, spec: ModelDeploymentSpec) -> str:
    """The router's metrics URL from the settings' template (`router_metrics_url`)."""
    return template.format(
        router=router_name(owner), namespace=owner.namespace, port=spec.router.http_port
    )


def router_endpoint(owner: Owner, spec: ModelDeploymentSpec) -> str:
    """In-cluster HTTP URL of the router Service."""
    return f"http://{router_name(owner)}.{owner.namespace}.svc:{spec.router.http_port}"


MODEL_VOLUME = "model"
MODEL_DIR = "/var/lib/mainsail/model"


def _model_init(spec: ModelDeploymentSpec, worker_image: str) -> list[dict[str, Any]]:
    """For a generated model: an init container (worker image, which has the generator) that
    writes the checkpoint the workers generate too (deterministic from arch, seed and size),
    so the router's tokenizer is exactly the workers' and the router image needs no torch."""
    source = spec.model
    if source.generate is None:
        return []
    return [
        {
            "name": "model",
            "image": worker_image,
            "args": [
                "mainsail", "model", "init", "--arch", source.generate,
                "--seed", str(source.seed), "--size", source.size, "--out", MODEL_DIR,
            ],
            "resources": {
                "requests": {"cpu": "500m", "memory": "1Gi"},
                "limits": {"cpu": "2", "memory": "2Gi"},
            },
            "volumeMounts": [{"name": MODEL_VOLUME, "mountPath": MODEL_DIR}],
        }
    ]  # fmt: skip


def router_deployment(
    owner: Owner, spec: ModelDeploymentSpec, image: str, cfg_hash: str, worker_image: str = ""
) -> dict[str, Any]:
    """`replicas` router pods behind one Service, probing `/health`; a generated model comes
    from an init container on the worker image (`worker_image`)."""
    router = spec.router
    init = _model_init(spec, worker_image or image)
    model_env = [{"name": MODEL_DIR_ENV, "value": MODEL_DIR}] if init else []
    model_mounts = (
        [{"name": MODEL_VOLUME, "mountPath": MODEL_DIR, "readOnly": True}] if init else []
    )
    model_volumes = [{"name": MODEL_VOLUME, "emptyDir": {}}] if init else []
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(owner, router_name(owner), COMPONENT),
        "spec": {
            "replicas": router.replicas,
            "selector": {"matchLabels": selector_labels(owner, COMPONENT)},
            "template": {
                "metadata": {
                    "labels": labels(owner, COMPONENT),
                    "annotations": {
                        ANNOTATION_CONFIG_HASH: cfg_hash,
                        # The common scrape convention, for Prometheus set-ups that use it; the
                        # chart's Grafana dashboard reads these metrics (docs/protocol.md).
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(router.http_port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "topologySpreadConstraints": _spread(owner),
                    "containers": [
                        {
                            "name": COMPONENT,
                            "image": image,
                            "args": ["router", "--config", CONFIG_PATH],
                            "ports": [
                                {"name": "http", "containerPort": router.http_port},
                                {"name": "grpc", "containerPort": router.grpc_port},
                                {"name": "fleet", "containerPort": router.fleet_port},
                            ],
                            "env": [
                                *common_env(owner, spec),
                                *model_env,
                                *client_auth_env(owner, spec),
                                *worker_plane_env(owner),
                            ],
                            "readinessProbe": {
                                "httpGet": {"path": "/health", "port": "http"},
                                "periodSeconds": 5,
                            },
                            "resources": {
                                "requests": {"cpu": "500m", "memory": "512Mi"},
                                "limits": {"cpu": "2", "memory": "2Gi"},
                            },
                            "volumeMounts": [
                                config_mount(),
                                *model_mounts,
                                *spec_model_mounts(spec),
                                tls_mount(),
                            ],
                        }
                    ],
                    "volumes": [
                        config_volume(owner),
                        *model_volumes,
                        *spec_model_volumes(spec),
                        tls_volume(owner),
                    ],
                },
            },
        },
    }
    if init:
        deployment["spec"]["template"]["spec"]["initContainers"] = init
    return deployment


def router_service(owner: Owner, spec: ModelDeploymentSpec) -> dict[str, Any]:
    """ClusterIP Service: the deployment's endpoint (HTTP and gRPC) and the workers' fleet
    port (registration; the router's NetworkPolicy admits only the deployment's Ray pods)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(owner, router_name(owner), COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner, COMPONENT),
            "ports": [
                {"name": "http", "port": spec.router.http_port, "targetPort": "http"},
                {"name": "grpc", "port": spec.router.grpc_port, "targetPort": "grpc"},
                {"name": "fleet", "port": spec.router.fleet_port, "targetPort": "fleet"},
            ],
        },
    }


SPREAD_KEYS = ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
"""Router replicas spread over nodes first, then zones."""


def _spread(owner: Owner) -> list[dict[str, Any]]:
    return [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(owner, COMPONENT)},
        }
        for key in SPREAD_KEYS
    ]


def router_peers_service(owner: Owner, spec: ModelDeploymentSpec) -> dict[str, Any]:
    """Headless Service over the router pods: its DNS name resolves to every router pod,
    which is how workers find all replicas (`mainsail.workers.router_discovery`, fleet port);
    its EndpointSlices are how the operator reads every replica's `/metrics` (http port,
    `mainsail.operator.router_replicas`)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(owner, router_peers_name(owner), COMPONENT),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(owner, COMPONENT),
            "ports": [
                {"name": "fleet", "port": spec.router.fleet_port, "targetPort": "fleet"},
                {"name": "http", "port": spec.router.http_port, "targetPort": "http"},
            ],
        },
    }


def router_disruption_budget(owner: Owner, spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """With several router replicas: at most one taken down at a time by voluntary
    disruptions. None for one replica (see the module doc)."""
    if spec.router.replicas < 2:
        return []
    return [
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": child_metadata(owner, router_name(owner), COMPONENT),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": selector_labels(owner, COMPONENT)},
            },
        }
    ]
