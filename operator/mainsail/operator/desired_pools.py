"""Worker pools: one `ServingPool` per role and one KubeRay `RayCluster` carrying them all.

Replica flow: the deployment's `pools.<role>.replicas` seeds the ServingPool's `spec.replicas`;
after that the ServingPool owns the number, so `kubectl scale servingpool`, an HPA or KEDA
can drive one role, and the RayCluster's worker group follows the ServingPool. Editing the
deployment's number again (the `declared-replicas` annotation remembers the last one) wins once.
When the pool's autoscaling is enabled the number is kept within its bounds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from mainsail.operator.desired_config import common_env, config_mount, config_volume
from mainsail.operator.desired_model import model_mounts, model_volumes
from mainsail.operator.desired_secrets import (
    redis_password_env,
    tls_mount,
    tls_volume,
    worker_plane_env,
)
from mainsail.operator.naming import (
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_DECLARED_REPLICAS,
    Owner,
    child_metadata,
    child_name,
    labels,
    selector_labels,
    selector_string,
)
from mainsail.operator.settings import OperatorSettings
from mainsail.spec.crd import SERVING_POOL_KIND
from mainsail.spec.deployment import API_GROUP, API_VERSION, ModelDeploymentSpec
from mainsail.spec.pools import Pool
from mainsail.spec.worker_metrics import WORKER_METRICS_PORT, WORKER_METRICS_PORT_NAME

POOL_COMPONENT = "pool"
WORKER_COMPONENT = "worker"
HEAD_COMPONENT = "head"
GPU_RESOURCE = "nvidia.com/gpu"
GCS_PORT = 6379
"""The Ray head's GCS port (KubeRay's default for `ray start --head`)."""
SUPERVISOR_MODULE = "mainsail.workers.cluster_supervisor"
SUPERVISOR_LOOP = f"{{ while true; do python3 -m {SUPERVISOR_MODULE}; sleep 2; done & }}"
"""The head container's command. KubeRay runs a container command that does not mention
`ray start` before its own `ulimit ...; ray start --head ... --block` (joined with `&&`, in
`bash -lc`), so this starts the worker supervisor in the background of the head container
(it must share the head's file system to attach to its Ray node) and restarts it if it exits;
the supervisor waits for the head to come up."""


def serving_pool_name(owner: Owner, role: str) -> str:
    return child_name(owner, role)


def ray_cluster_name(owner: Owner) -> str:
    return child_name(owner)


def worker_selector(owner: Owner, role: str) -> str:
    """Label selector of one role's worker pods (the ServingPool's `status.selector`)."""
    return selector_string(selector_labels(owner, WORKER_COMPONENT, role))


def pool_replicas(pool: Pool, observed: Mapping[str, Any] | None) -> int:
    """The ServingPool's desired `spec.replicas` given the one that exists (if any)."""
    declared = pool.replicas
    replicas = declared
    if observed is not None:
        annotations = (observed.get("metadata") or {}).get("annotations") or {}
        if annotations.get(ANNOTATION_DECLARED_REPLICAS) == str(declared):
            replicas = int((observed.get("spec") or {}).get("replicas", declared))
    if pool.autoscaling.enabled:
        replicas = min(max(replicas, pool.autoscaling.min_replicas), pool.autoscaling.max_replicas)
    return replicas


def serving_pool(owner: Owner, role: str, pool: Pool, replicas: int) -> dict[str, Any]:
    """The ServingPool child of one role."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": SERVING_POOL_KIND,
        "metadata": child_metadata(
            owner,
            serving_pool_name(owner, role),
            POOL_COMPONENT,
            role,
            annotations={ANNOTATION_DECLARED_REPLICAS: str(pool.replicas)},
        ),
        "spec": {
            "deployment": owner.name,
            "role": role,
            "replicas": replicas,
            "template": pool.model_dump(by_alias=True, mode="json"),
        },
    }


def _pod_template(
    owner: Owner,
    spec: ModelDeploymentSpec,
    settings: OperatorSettings,
    cfg_hash: str,
    component: str,
    role: str | None,
    container: dict[str, Any],
    pool: Pool | None = None,
) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": [config_volume(owner), tls_volume(owner)],
    }
    if pool is not None:
        selector = dict(pool.node_selector)
        if pool.resources.gpu_type is not None:
            selector[settings.gpu_type_label] = pool.resources.gpu_type
        if selector:
            pod["nodeSelector"] = selector
        if pool.resources.gpus > 0:
            pod["tolerations"] = [
                {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
            ]
    return {
        "metadata": {
            "labels": labels(owner, component, role),
            "annotations": {ANNOTATION_CONFIG_HASH: cfg_hash},
        },
        "spec": pod,
    }


def _container(
    name: str,
    owner: Owner,
    spec: ModelDeploymentSpec,
    image: str,
    extra_env: list[dict[str, str]],
    requests: dict[str, str],
    limits: dict[str, str],
) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "env": [
            *common_env(owner, spec),
            *extra_env,
            *worker_plane_env(owner),
            *redis_password_env(owner),
        ],
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": [config_mount(), tls_mount()],
    }


def _ray_start_params(spec: ModelDeploymentSpec, role: str) -> dict[str, str]:
    """A custom Ray resource per role lets actors be placed on their pool's nodes only. A
    sharded worker's rank actors each take a one-CPU bundle of its placement group (and one
    of the pod's GPUs on a GPU pool), so the pod offers one logical CPU per rank."""
    params = {"resources": json.dumps(json.dumps({f"mainsail-{role}": 1}))}
    if spec.engine.sharded:
        params["num-cpus"] = str(spec.engine.ranks)
    return params


def worker_group(
    owner: Owner,
    spec: ModelDeploymentSpec,
    settings: OperatorSettings,
    cfg_hash: str,
    role: str,
    pool: Pool,
    replicas: int,
    cache_urls: list[str],
    workers_to_delete: Sequence[str] = (),
) -> dict[str, Any]:
    """One RayCluster worker group: a role's replicas, GPUs as limits, GPU type as selector,
    and the pods a scale-down removes (drained first, see `scale_down`)."""
    res = pool.resources
    limits = {"memory": res.memory}
    if res.gpus > 0:
        limits[GPU_RESOURCE] = str(res.gpus)
    env = [
        {"name": "MAINSAIL_ROLE", "value": role},
        {"name": "MAINSAIL_CACHE_URLS", "value": ",".join(cache_urls)},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    ]
    container = _container(
        "ray-worker",
        owner,
        spec,
        settings.worker_image,
        env,
        {"cpu": res.cpu, "memory": res.memory},
        limits,
    )
    # The worker's /metrics (one worker per pod): named for a PodMonitor, annotated for
    # annotation-based scrape configs.
    container["ports"] = [{"name": WORKER_METRICS_PORT_NAME, "containerPort": WORKER_METRICS_PORT}]
    container["volumeMounts"] += model_mounts(spec)  # the checkpoint at spec.model.path
    template = _pod_template(
        owner, spec, settings, cfg_hash, WORKER_COMPONENT, role, container, pool
    )
    template["spec"]["volumes"] += model_volumes(spec)
    template["metadata"]["annotations"].update(
        {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(WORKER_METRICS_PORT),
            "prometheus.io/path": "/metrics",
        }
    )
    return {
        "groupName": role,
        "replicas": replicas,
        "minReplicas": 0,
        "maxReplicas": max(replicas, pool.autoscaling.max_replicas),
        "rayStartParams": _ray_start_params(spec, role),
        "scaleStrategy": {"workersToDelete": list(workers_to_delete)},
        "template": template,
    }


def ray_cluster(
    owner: Owner,
    spec: ModelDeploymentSpec,
    settings: OperatorSettings,
    cfg_hash: str,
    replicas: Mapping[str, int],
    cache_urls: list[str],
    workers_to_delete: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The RayCluster: a CPU-only head running the worker supervisor (no engine on it) and
    one worker group per pool, each pod bringing one unit of `mainsail-<role>`."""
    head_env = [{"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}]
    head = _container(
        "ray-head",
        owner,
        spec,
        settings.worker_image,
        head_env,
        # No engine runs here (num-cpus 0): GCS, the dashboard agent and the supervisor.
        {"cpu": "250m", "memory": "1Gi"},
        {"memory": "2Gi"},
    )
    head["args"] = [SUPERVISOR_LOOP]
    # KubeRay's default head probes also ask the dashboard (port 8265), which is off here (it
    # is Ray's job API); they would keep the head unready and restart it every ~10 minutes,
    # taking every worker with it. The GCS port answering is what the head is for.
    gcs = {"tcpSocket": {"port": GCS_PORT}}
    head["readinessProbe"] = {**gcs, "periodSeconds": 5, "failureThreshold": 6}
    head["livenessProbe"] = {
        **gcs, "initialDelaySeconds": 30, "periodSeconds": 10, "failureThreshold": 6
    }  # fmt: skip
    groups = [
        worker_group(
            owner,
            spec,
            settings,
            cfg_hash,
            role,
            pool,
            replicas[role],
            cache_urls,
            (workers_to_delete or {}).get(role, ()),
        )
        for role, pool in spec.pools.worker_pools().items()
    ]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": child_metadata(owner, ray_cluster_name(owner), "ray"),
        "spec": {
            "rayVersion": settings.ray_version,
            "enableInTreeAutoscaling": False,
            "headGroupSpec": {
                # No dashboard: it is also Ray's job API (unauthenticated code execution).
                "rayStartParams": {"num-cpus": "0", "include-dashboard": "false"},
                "template": _pod_template(
                    owner, spec, settings, cfg_hash, HEAD_COMPONENT, None, head
                ),
            },
            "workerGroupSpecs": groups,
        },
    }
