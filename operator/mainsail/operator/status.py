"""Status from observed children: per-pool replicas, conditions with reasons, the endpoint.

Pure: the reconciler hands in what it observed (after applying, plus the registered workers
per role its `RouterProbe` read from the router) and the previous status, and gets the new
status back. A condition keeps its `lastTransitionTime` while its status holds. `Ready` is
the conjunction of `RouterReady` (the router Deployment is ready and the router answers),
`PoolsReady` (each pool has as many workers *registered with the router* as its ServingPool
asks for; Ready pods alone are not enough: a worker serves only once it has loaded the model
and registered), `CacheReady` and `KVConfigConsistent`; its reason is the first one that is
not true, or `ApplyFailed` (naming the child and the API server's answer) when the pass could
not write every child.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mainsail.operator.desired_cache import runs_cache
from mainsail.operator.desired_config import CONFIG_KEY
from mainsail.operator.desired_pools import serving_pool_name, worker_selector
from mainsail.operator.desired_router import router_endpoint
from mainsail.operator.naming import Owner
from mainsail.spec.crd import Condition, ModelDeploymentStatus, PoolStatus, ServingPoolStatus
from mainsail.spec.deployment import ModelDeploymentSpec

Obj = Mapping[str, Any]
CONDITION_TYPES = ("Ready", "PoolsReady", "RouterReady", "CacheReady", "KVConfigConsistent")


@dataclass(frozen=True)
class Observation:
    """A deployment's children as last read or written, by role where it matters."""

    serving_pools: Mapping[str, Obj] = field(default_factory=dict)
    pool_pods: Mapping[str, Sequence[Obj]] = field(default_factory=dict)
    router: Obj | None = None
    cache: Obj | None = None
    config_map: Obj | None = None
    ray_cluster: Obj | None = None
    registered: Mapping[str, int] | None = None
    """Role -> workers registered with every router replica read (the fewest any replica
    has); None when no replica was read."""
    router_error: str | None = None
    """Why the router could not be read (when `registered` is None)."""
    apply_error: str | None = None
    """The child this pass could not write and the API server's answer (e.g. a 403 when the
    operator's RBAC lacks a kind), when the pass stopped part-way."""


def pod_ready(pod: Obj) -> bool:
    """Running, not terminating, and its Ready condition is True."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def serving_pool_status(owner: Owner, role: str, pool: Obj, pods: Sequence[Obj]) -> dict[str, Any]:
    """The ServingPool's status (`/scale` reads replicas and selector from it)."""
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    status = ServingPoolStatus(
        observed_generation=(pool.get("metadata") or {}).get("generation"),
        replicas=len(live),
        ready_replicas=sum(1 for p in live if pod_ready(p)),
        selector=worker_selector(owner, role),
    )
    return status.model_dump(by_alias=True, mode="json", exclude_none=True)


def _workload_ready(obj: Obj | None) -> tuple[bool, str]:
    """Deployment/StatefulSet: current generation observed and all replicas ready."""
    if obj is None:
        return False, "missing"
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    want, ready = int(spec.get("replicas", 1)), int(status.get("readyReplicas", 0))
    generation = (obj.get("metadata") or {}).get("generation", 0)
    if status.get("observedGeneration", 0) < generation and want > 0:
        return False, f"{ready}/{want} ready, rollout not yet observed"
    return ready >= want, f"{ready}/{want} ready"


def _fingerprints(obs: Observation) -> dict[str, set[str]]:
    """KV fingerprints each child hands out (config document, container environments)."""
    found: dict[str, set[str]] = {}
    if obs.config_map is not None:
        text = (obs.config_map.get("data") or {}).get(CONFIG_KEY, "{}")
        try:
            found["config"] = {str(json.loads(text).get("kvFingerprint"))}
        except (ValueError, AttributeError):
            found["config"] = {"<unreadable>"}

    def walk(name: str, node: Any) -> None:
        if isinstance(node, Mapping):
            if node.get("name") == "MAINSAIL_KV_FINGERPRINT" and "value" in node:
                found.setdefault(name, set()).add(str(node["value"]))
            for value in node.values():
                walk(name, value)
        elif isinstance(node, list):
            for value in node:
                walk(name, value)

    if obs.router is not None:
        walk("router", obs.router.get("spec"))
    if obs.ray_cluster is not None:
        walk("workers", obs.ray_cluster.get("spec"))
    return found


def _condition(kind: str, ok: bool, reason: str, message: str, generation: int) -> Condition:
    return Condition(
        type=kind,
        status="True" if ok else "False",
        reason=reason,
        message=message,
        last_transition_time="",
        observed_generation=generation,
    )


def _registered(obs: Observation, role: str) -> int | None:
    return None if obs.registered is None else int(obs.registered.get(role, 0))


def _want(obs: Observation, role: str) -> int | None:
    pool = obs.serving_pools.get(role)
    return int((pool.get("spec") or {}).get("replicas", 0)) if pool else None


def _conditions(owner: Owner, spec: ModelDeploymentSpec, obs: Observation) -> list[Condition]:
    gen = owner.generation
    lagging = []
    for role in spec.pools.worker_pools():
        want, registered = _want(obs, role), _registered(obs, role)
        pods = sum(1 for p in obs.pool_pods.get(role, ()) if pod_ready(p))
        if want is None or registered is None or registered < want:
            lagging.append(
                f"{role} {'?' if registered is None else registered}/"
                f"{'?' if want is None else want} registered ({pods} pods ready)"
            )
    pools = _condition(
        "PoolsReady",
        not lagging,
        "PoolsNotReady" if lagging else "AllPoolsReady",
        "waiting for workers: " + ", ".join(lagging)
        if lagging
        else "every pool has its workers registered with every router replica",
        gen,
    )
    router_ok, router_msg = _workload_ready(obs.router)
    reason = "RouterAvailable" if router_ok else "RouterNotReady"
    if router_ok and obs.registered is None:
        router_ok, reason = False, "RouterUnreachable"
        router_msg += f", but not answering: {obs.router_error or 'not read'}"
    router = _condition("RouterReady", router_ok, reason, f"router {router_msg}", gen)
    cache_spec = spec.pools.cache
    if not cache_spec.enabled or cache_spec.replicas == 0:
        cache = _condition("CacheReady", True, "CacheDisabled", "no shared KV tier", gen)
    elif not runs_cache(cache_spec):
        cache = _condition("CacheReady", True, "ExternalCache", "using the external Redis", gen)
    else:
        ok, msg = _workload_ready(obs.cache)
        cache = _condition(
            "CacheReady", ok, "CacheAvailable" if ok else "CacheNotReady", f"cache {msg}", gen
        )
    expected = spec.engine.kv_hash().fingerprint()
    seen = _fingerprints(obs)
    wrong = sorted(name for name, values in seen.items() if values != {expected})
    missing = sorted({"config", "router", "workers"} - set(seen))
    kv_ok = not wrong and not missing
    kv = _condition(
        "KVConfigConsistent",
        kv_ok,
        "FingerprintsMatch" if kv_ok else ("FingerprintMismatch" if wrong else "ConfigMissing"),
        f"router and workers hash KV blocks as {expected}"
        if kv_ok
        else f"expected {expected}; differs in {wrong or '-'}; missing in {missing or '-'}",
        gen,
    )
    parts = [router, pools, cache, kv]
    first_bad = next((c for c in parts if c.status != "True"), None)
    ready = _condition(
        "Ready",
        first_bad is None,
        "DeploymentReady" if first_bad is None else first_bad.reason,
        "serving" if first_bad is None else first_bad.message,
        gen,
    )
    if obs.apply_error is not None:  # the children are not what the spec asks for
        ready = _condition(
            "Ready", False, "ApplyFailed", f"could not apply {obs.apply_error}"[:2000], gen
        )
    return [ready, *parts]


def merge_conditions(
    previous: Sequence[Mapping[str, Any]], current: Sequence[Condition], now: str
) -> list[Condition]:
    """Keep `lastTransitionTime` of conditions whose status did not change."""
    before = {c.get("type"): c for c in previous}
    out = []
    for cond in current:
        old = before.get(cond.type)
        same = old is not None and old.get("status") == cond.status
        stamp = str(old.get("lastTransitionTime")) if same and old is not None else now
        out.append(cond.model_copy(update={"last_transition_time": stamp}))
    return out


def deployment_status(
    owner: Owner,
    spec: ModelDeploymentSpec,
    obs: Observation,
    previous: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    """The ModelDeployment's whole status, as JSON for a status patch."""
    pools: dict[str, PoolStatus] = {}
    for role in spec.pools.worker_pools():
        pool = obs.serving_pools.get(role) or {}
        pools[role] = PoolStatus(
            serving_pool=serving_pool_name(owner, role),
            replicas=int((pool.get("spec") or {}).get("replicas", 0)),
            ready_replicas=sum(1 for p in obs.pool_pods.get(role, ()) if pod_ready(p)),
            registered_workers=_registered(obs, role),
        )
    ready_pools = sum(
        1
        for p in pools.values()
        if p.registered_workers is not None and p.registered_workers >= p.replicas
    )
    conditions = merge_conditions(
        (previous or {}).get("conditions") or [], _conditions(owner, spec, obs), now
    )
    status = ModelDeploymentStatus(
        observed_generation=owner.generation,
        ready=f"{ready_pools}/{len(pools)}",
        endpoint=router_endpoint(owner, spec),
        kv_fingerprint=spec.engine.kv_hash().fingerprint(),
        pools=pools,
        conditions=conditions,
    )
    return status.model_dump(by_alias=True, mode="json", exclude_none=True)
