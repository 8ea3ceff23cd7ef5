"""Where each router replica of a deployment answers: its pods, from the API's EndpointSlices.

Why not the router Service: it sends each request to one replica, so a scrape through it reads
one replica's queue, and status would ask one replica which workers have registered. The
headless `<name>-router-peers` Service selects every router pod; the cluster's EndpointSlice
controller lists them (address, `serving`/`terminating` conditions, the Service's named
ports). The operator reads those slices (RBAC: list EndpointSlices, no Pod exec, no DNS) and
builds one URL per serving pod from `router_pod_metrics_url` (placeholders ``{address}``, the
pod IP, bracketed when IPv6; ``{port}``, the slice's `http` port or `spec.router.httpPort`;
``{namespace}``).

When there is no slice (a cluster whose controller has not listed the pods yet, an API server
without a controller manager) the Service URL is the one answer: one replica read, as before.

`read_every_replica` is the read both autoscalers share (replica pool sizes, `autoscaler`;
expert-parallel degree, `expert_scaler`): every replica at once, each failure kept by URL.
The reading itself (every URL at once, failures kept) is `replica_reads`, which `mainsail up`
shares.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from mainsail.operator.desired_config import router_peers_name
from mainsail.operator.desired_router import router_metrics_url
from mainsail.operator.kube import KubeApi, KubeError
from mainsail.operator.naming import Owner
from mainsail.operator.replica_reads import ReplicaReads, read_urls
from mainsail.operator.settings import OperatorSettings
from mainsail.spec.deployment import ModelDeploymentSpec

log = logging.getLogger(__name__)

SLICE_API = "discovery.k8s.io/v1"
SLICE_KIND = "EndpointSlice"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

T = TypeVar("T")


def _serving(endpoint: Mapping[str, Any]) -> bool:
    """Serving and not terminating; an absent condition counts as true (the API's rule)."""
    conditions = endpoint.get("conditions") or {}
    serving = conditions.get("serving", conditions.get("ready", True))
    return serving is not False and conditions.get("terminating") is not True


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def replica_urls(
    slices: Iterable[Mapping[str, Any]], template: str, namespace: str, http_port: int
) -> list[str]:
    """One URL per serving router pod in ``slices``, sorted, without duplicates (a pod listed
    in two slices, IPv4 and IPv6, is read once: the first address family seen)."""
    urls: set[str] = set()
    seen_pods: set[str] = set()
    for item in slices:
        ports = {p.get("name"): p.get("port") for p in item.get("ports") or []}
        port = int(ports.get("http") or http_port)
        for endpoint in item.get("endpoints") or []:
            if not _serving(endpoint) or not endpoint.get("addresses"):
                continue
            pod = ((endpoint.get("targetRef") or {}).get("name")) or ""
            if pod in seen_pods:
                continue
            if pod:
                seen_pods.add(pod)
            address = str(endpoint["addresses"][0])
            urls.add(template.format(address=_host(address), port=port, namespace=namespace))
    return sorted(urls)


def router_urls(
    api: KubeApi,
    pod_template: str,
    service_template: str,
    owner: Owner,
    spec: ModelDeploymentSpec,
) -> list[str]:
    """Every serving replica's URL; the Service URL when no slice lists one (or the slices
    cannot be read: logged, and the pass still reads one replica)."""
    selector = f"{SERVICE_NAME_LABEL}={router_peers_name(owner)}"
    try:
        slices = api.list(SLICE_API, SLICE_KIND, owner.namespace, selector)
    except KubeError as exc:
        log.warning(
            "%s/%s: cannot list router EndpointSlices: %s", owner.namespace, owner.name, exc
        )
        slices = []
    urls = replica_urls(slices, pod_template, owner.namespace, spec.router.http_port)
    return urls or [router_metrics_url(service_template, owner, spec)]


async def read_every_replica(
    api: KubeApi,
    settings: OperatorSettings,
    owner: Owner,
    spec: ModelDeploymentSpec,
    read: Callable[[str], Awaitable[T]],
) -> ReplicaReads[T]:
    """``read`` every serving replica's metrics URL (`router_urls`) at once
    (`replica_reads.read_urls`: a replica raising `SignalsUnavailable` is that replica's
    failure; any other error propagates)."""
    urls = await asyncio.to_thread(
        router_urls,
        api,
        settings.router_pod_metrics_url,
        settings.router_metrics_url,
        owner,
        spec,
    )
    return await read_urls(urls, read)
