"""The cache pool: a Redis-protocol StatefulSet behind a headless Service, or nothing.

Each cache replica is an independent server (no Redis Cluster): clients shard KV blocks over
the per-pod URLs in `config.json` by block hash, so adding a replica needs no resharding
protocol, only a config change. With `externalUrl` set the operator runs no cache and hands that
URL out instead; with `enabled: false` workers keep KV on their own tiers only.
"""

from __future__ import annotations

from typing import Any

from mainsail.operator.desired_secrets import redis_password_env
from mainsail.operator.naming import Owner, child_metadata, child_name, labels, selector_labels
from mainsail.operator.quantity import ceil_bytes
from mainsail.spec.pools import CachePool
from mainsail.spec.worker_auth import REDIS_PASSWORD_ENV

COMPONENT = "cache"
REDIS_PORT = 6379


def cache_name(owner: Owner) -> str:
    return child_name(owner, COMPONENT)


def runs_cache(cache: CachePool) -> bool:
    """Whether the operator runs Redis itself for this pool."""
    return cache.enabled and cache.external_url is None and cache.replicas > 0


def cache_urls(owner: Owner, cache: CachePool) -> list[str]:
    """URLs clients shard over: the external one, one per pod, or none."""
    if not cache.enabled:
        return []
    if cache.external_url is not None:
        return [cache.external_url]
    name = cache_name(owner)
    host = f"{name}.{owner.namespace}.svc"
    return [f"redis://{name}-{i}.{host}:{REDIS_PORT}/0" for i in range(cache.replicas)]


def cache_service(owner: Owner) -> dict[str, Any]:
    """Headless Service giving each cache pod a stable DNS name."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(owner, cache_name(owner), COMPONENT),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(owner, COMPONENT),
            "ports": [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis"}],
        },
    }


def cache_statefulset(owner: Owner, cache: CachePool, image: str) -> dict[str, Any]:
    """Redis-protocol servers with an LRU memory cap and no persistence (a cache, not a store)."""
    max_bytes = ceil_bytes(cache.max_memory)
    limit = max_bytes + max_bytes // 4 + 64 * 2**20  # allocator overhead and client buffers
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": child_metadata(owner, cache_name(owner), COMPONENT),
        "spec": {
            "replicas": cache.replicas,
            "serviceName": cache_name(owner),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector_labels(owner, COMPONENT)},
            "template": {
                "metadata": {"labels": labels(owner, COMPONENT)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "volumes": [{"name": "data", "emptyDir": {"sizeLimit": "64Mi"}}],
                    "containers": [
                        {
                            "name": "redis",
                            "image": image,
                            # The password comes from the credentials Secret; the kubelet
                            # expands it into the args, so the pod spec never holds it.
                            "env": redis_password_env(owner),
                            "args": [
                                "--maxmemory",
                                str(max_bytes),
                                "--maxmemory-policy",
                                "allkeys-lru",
                                "--save",
                                "",
                                "--appendonly",
                                "no",
                                "--requirepass",
                                f"$({REDIS_PASSWORD_ENV})",
                            ],
                            "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
                            "readinessProbe": {
                                "tcpSocket": {"port": "redis"},
                                "periodSeconds": 5,
                            },
                            # The server's working directory (nothing is persisted there).
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                            "resources": {
                                "requests": {"cpu": "250m", "memory": str(limit)},
                                "limits": {"memory": str(limit)},
                            },
                        }
                    ],
                },
            },
        },
    }
