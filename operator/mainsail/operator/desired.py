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
from mainsail.operator.desired_pools import pool_replicas, ray_cluster, serving_pool
from mainsail.operator.desired_router import router_deployment, router_service
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
) -> list[dict[str, Any]]:
    """Children in apply order; `observed_pools` maps role to the existing ServingPool,
    `workers_to_delete` role to the worker pods a scale-down removes (see `scale_down`)."""
    observed_pools = observed_pools or {}
    urls = cache_urls(owner, spec.pools.cache)
    text = config_text(deployment_config(owner, spec, urls))
    cfg_hash = config_hash(text)
    children: list[dict[str, Any]] = [config_map(owner, text)]
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
        router_deployment(owner, spec, settings.router_image, cfg_hash, settings.worker_image),
    ]
    stamp_pull_policies(children, settings)
    return children
