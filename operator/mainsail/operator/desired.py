"""Every child a `ModelDeployment` should have, as a pure function of its spec.

The only observed input is the existing ServingPools, because their `spec.replicas` may have
been scaled since they were created (see `desired_pools`). The output order is the apply order:
configuration first, then the cache, pools, Ray and finally the router that needs them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mainsail.operator.desired_cache import cache_service, cache_statefulset, cache_urls, runs_cache
from mainsail.operator.desired_config import config_hash, config_map, config_text, deployment_config
from mainsail.operator.desired_network import network_policies
from mainsail.operator.desired_pools import pool_replicas, ray_cluster, serving_pool
from mainsail.operator.desired_router import (
    router_deployment,
    router_disruption_budget,
    router_peers_service,
    router_service,
)
from mainsail.operator.desired_secrets import ANNOTATION_ISSUE, Issuer, credentials_secret, issue_of
from mainsail.operator.desired_security import REDIS_USER, RUN_AS_USER, harden
from mainsail.operator.naming import Owner
from mainsail.operator.pull_policy import stamp_pull_policies
from mainsail.operator.settings import OperatorSettings
from mainsail.spec.deployment import ModelDeploymentSpec


def desired_children(
    owner: Owner,
    spec: ModelDeploymentSpec,
    settings: OperatorSettings,
    observed_pools: Mapping[str, Mapping[str, Any]] | None = None,
    workers_to_delete: Mapping[str, Sequence[str]] | None = None,
    observed_secret: Mapping[str, Any] | None = None,
    rotate: str = "",
    issuer: Issuer | None = None,
) -> list[dict[str, Any]]:
    """Children in apply order; `observed_pools` maps role to the existing ServingPool,
    `workers_to_delete` role to the worker pods a scale-down removes (see `scale_down`),
    `observed_secret` is the existing credentials Secret (kept unless `rotate` changed)."""
    observed_pools = observed_pools or {}
    urls = cache_urls(owner, spec.pools.cache)
    text = config_text(deployment_config(owner, spec, urls))
    cfg_hash = config_hash(text)
    secret = credentials_secret(owner, spec, observed_secret, rotate, issuer)
    children: list[dict[str, Any]] = [secret, config_map(owner, text)]
    children += network_policies(owner, spec, settings, runs_cache(spec.pools.cache))
    if runs_cache(spec.pools.cache):
        children += [
            cache_service(owner),
            cache_statefulset(owner, spec.pools.cache, settings.redis_image),
        ]
    replicas: dict[str, int] = {}
    for role, pool in spec.pools.worker_pools().items():
        replicas[role] = pool_replicas(pool, observed_pools.get(role))
        children.append(serving_pool(owner, role, pool, replicas[role]))
    children.append(ray_cluster(owner, spec, settings, cfg_hash, replicas, urls, workers_to_delete))
    children += [
        router_service(owner, spec),
        router_peers_service(owner, spec),
        router_deployment(owner, spec, settings.router_image, cfg_hash, settings.worker_image),
        *router_disruption_budget(owner, spec),
    ]
    for child in children:  # pods reading the credentials roll when they are rotated
        for template in pod_templates(child):
            template["metadata"].setdefault("annotations", {})[ANNOTATION_ISSUE] = issue_of(secret)
            harden(template["spec"], REDIS_USER if child["kind"] == "StatefulSet" else RUN_AS_USER)
    stamp_pull_policies(children, settings)
    return children


def pod_templates(child: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The pod templates inside a child (Deployment, StatefulSet, RayCluster groups)."""
    spec = child.get("spec") or {}
    if child["kind"] in ("Deployment", "StatefulSet"):
        return [spec["template"]]
    if child["kind"] == "RayCluster":
        groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
        return [g["template"] for g in groups]
    return []
