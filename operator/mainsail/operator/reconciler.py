"""One reconcile pass of a `ModelDeployment`: observe, plan, apply, report.

Synchronous and free of kopf, so it can be driven by kopf handlers (in a worker thread), by a
test, or by a benchmark, against any `KubeApi`. Every pass lists the deployment's children by
label, applies only what differs from the desired state (server-side apply, field manager
`mainsail-operator`), deletes children the spec no longer asks for, then writes the
ServingPools' and the deployment's status if they changed. Running it twice changes nothing.
A write the API server refuses (say, RBAC without one kind) ends the writes of that pass;
status (`Ready` False, reason `ApplyFailed`) and an event name the child, and the next pass
starts over from what exists, so a pass cut short (or an operator killed mid-pass) never
leaves a second copy of anything.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from mainsail.operator.desired import desired_children
from mainsail.operator.desired_cache import cache_name
from mainsail.operator.desired_config import config_map_name
from mainsail.operator.desired_pools import WORKER_COMPONENT, pool_replicas, ray_cluster_name
from mainsail.operator.desired_router import router_metrics_url, router_name
from mainsail.operator.desired_secrets import admin_token, rotation
from mainsail.operator.kinds import CHILDREN
from mainsail.operator.kube import KubeApi, KubeError, Obj
from mainsail.operator.naming import (
    LABEL_COMPONENT,
    LABEL_DEPLOYMENT,
    LABEL_ROLE,
    MD_API_VERSION,
    Owner,
)
from mainsail.operator.plan import Plan, child_key, contains, controlled_by, plan_changes
from mainsail.operator.router_probe import HttpRouterProbe, RouterProbe, RouterUnreachable
from mainsail.operator.router_replicas import router_urls
from mainsail.operator.scale_down import choose_removals
from mainsail.operator.settings import OperatorSettings
from mainsail.operator.signal_merge import merge_registered
from mainsail.operator.status import Observation, deployment_status, serving_pool_status
from mainsail.spec.crd import SERVING_POOL_KIND
from mainsail.spec.deployment import KIND, ModelDeploymentSpec
from mainsail.spec.worker_auth import secret_name


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class Outcome:
    """What one pass did, for events and logs."""

    body: Obj
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    invalid: str | None = None
    drained: list[str] = field(default_factory=list)
    drain_failures: list[str] = field(default_factory=list)
    failed: str | None = None
    """The child the pass could not write and why; the writes after it were not tried."""
    ready_before: str | None = None
    ready_after: str | None = None

    @property
    def writes(self) -> int:
        return len(self.created) + len(self.updated) + len(self.deleted)


def _describe(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


class _Refused(Exception):
    """The API server refused a write of `child` (kind/name)."""

    def __init__(self, child: str, error: KubeError) -> None:
        super().__init__(f"{child}: {error}")
        self.child, self.error = child, error


@contextlib.contextmanager
def _refusal(obj: Obj) -> Iterator[None]:
    """Turn a `KubeError` of a write of `obj` into `_Refused` naming it."""
    try:
        yield
    except KubeError as exc:
        raise _Refused(_describe(obj), exc) from exc


def _ready_status(status: Any) -> str | None:
    for cond in (status or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status"))
    return None


class Reconciler:
    """Drives one deployment's children towards its spec; see the module docstring."""

    def __init__(
        self,
        api: KubeApi,
        settings: OperatorSettings,
        clock: Callable[[], datetime.datetime] = utc_now,
        probe: RouterProbe | None = None,
    ) -> None:
        self._api = api
        self._settings = settings
        self._clock = clock
        self._probe = probe if probe is not None else HttpRouterProbe()
        self._admin_token: str | None = None  # the router's, read with the deployment's Secret

    def reconcile(self, namespace: str, name: str) -> Outcome | None:
        """One pass for the named deployment; None when it is gone or being deleted."""
        body = self._api.get(MD_API_VERSION, KIND, namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None
        return self.reconcile_body(body)

    def _now(self) -> str:
        return self._clock().astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def reconcile_body(self, body: Obj) -> Outcome:
        owner = Owner.from_body(body)
        outcome = Outcome(body=body, ready_before=_ready_status(body.get("status")))
        try:
            spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            outcome.invalid = str(exc)
            self._report_invalid(owner, body, str(exc))
            return outcome
        api, ns = self._api, owner.namespace
        selector = f"{LABEL_DEPLOYMENT}={owner.name}"
        ours = [
            obj
            for child in CHILDREN
            for obj in api.list(child.api_version, child.kind, ns, selector)
            if controlled_by(obj, owner)
        ]
        pools = {
            obj["spec"]["role"]: obj
            for obj in ours
            if obj["kind"] == SERVING_POOL_KIND and "role" in (obj.get("spec") or {})
        }
        # The credentials Secret is read by name (the operator may not list Secrets).
        secret = api.get("v1", "Secret", ns, secret_name(owner.name))
        if secret is not None and controlled_by(secret, owner):
            ours.append(secret)
        else:
            secret = None
        named = spec.router.auth.secret_name
        self._admin_token = admin_token(
            api.get("v1", "Secret", ns, named) if named is not None else secret
        )
        pods = self._worker_pods(owner)
        removals = self._scale_downs(owner, spec, ours, pools, pods, outcome)
        rotate = rotation((body.get("metadata") or {}).get("annotations"))
        desired = desired_children(owner, spec, self._settings, pools, removals, secret, rotate)
        plan = plan_changes(owner, desired, ours)
        current = {child_key(obj): obj for obj in ours}
        try:
            self._write_children(owner, plan, current, outcome)
        except _Refused as refused:
            if refused.error.status == 403 and "NamespaceTerminating" in str(refused.error):
                raise refused.error from None
            # E.g. RBAC without one kind: the pass stops here, status and an event name it,
            # and the next pass (resync, or any child's event) tries again from the start.
            outcome.failed = f"{refused.child}: {refused.error}"
        self._write_status(owner, spec, body, current, pods, outcome.failed)
        outcome.ready_after = _ready_status(outcome.body.get("status"))
        if outcome.ready_after is None:
            outcome.ready_after = outcome.ready_before
        return outcome

    def _write_children(
        self, owner: Owner, plan: Plan, current: dict[Any, Obj], outcome: Outcome
    ) -> None:
        """Create, update, delete in apply order; a refused write raises `_Refused`."""
        api, ns = self._api, owner.namespace
        for obj in plan.create:
            meta = obj["metadata"]
            with _refusal(obj):
                existing = api.get(obj["apiVersion"], obj["kind"], ns, meta["name"])
                if existing is not None and not controlled_by(existing, owner):
                    outcome.conflicts.append(_describe(obj))
                    continue
                current[child_key(obj)] = api.apply(obj)
            outcome.created.append(_describe(obj))
        for obj in plan.update:
            with _refusal(obj):
                current[child_key(obj)] = api.apply(obj)
            outcome.updated.append(_describe(obj))
        for obj in plan.delete:
            meta = obj["metadata"]
            with _refusal(obj):
                api.delete(obj["apiVersion"], obj["kind"], ns, meta["name"], meta["uid"])
            current.pop(child_key(obj), None)
            outcome.deleted.append(_describe(obj))

    def _worker_pods(self, owner: Owner) -> dict[str, list[Obj]]:
        """The deployment's worker pods by role."""
        selector = f"{LABEL_DEPLOYMENT}={owner.name},{LABEL_COMPONENT}={WORKER_COMPONENT}"
        pods: dict[str, list[Obj]] = {}
        for pod in self._api.list("v1", "Pod", owner.namespace, selector):
            role = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_ROLE, "")
            pods.setdefault(role, []).append(pod)
        return pods

    def _scale_downs(
        self,
        owner: Owner,
        spec: ModelDeploymentSpec,
        ours: list[Obj],
        pools: dict[str, Obj],
        pods: dict[str, list[Obj]],
        outcome: Outcome,
    ) -> dict[str, list[str]]:
        """Role -> `workersToDelete`; each newly chosen pod's worker is drained first."""
        ray = next((o for o in ours if o["kind"] == "RayCluster"), None)
        ray_spec = (ray or {}).get("spec") or {}
        groups = {g.get("groupName"): g for g in ray_spec.get("workerGroupSpecs") or []}
        out: dict[str, list[str]] = {}
        base = router_metrics_url(self._settings.router_admin_url, owner, spec)
        for role, pool in spec.pools.worker_pools().items():
            group = groups.get(role)
            if group is None:
                continue
            previous = (group.get("scaleStrategy") or {}).get("workersToDelete") or []
            decision = choose_removals(
                pods.get(role, []),
                previous,
                int(group.get("replicas", 0)),
                pool_replicas(pool, pools.get(role)),
            )
            for name in decision.new:
                try:
                    self._probe.drain(base, name, self._admin_token)
                    outcome.drained.append(name)
                except RouterUnreachable as exc:
                    outcome.drain_failures.append(f"{name}: {exc}")
            out[role] = list(decision.workers_to_delete)
        return out

    def _registered(
        self, owner: Owner, spec: ModelDeploymentSpec
    ) -> tuple[dict[str, int] | None, str | None]:
        """Role -> workers registered with every router replica read (`signal_merge`), or
        None and why no replica could be read."""
        settings = self._settings
        urls = router_urls(
            self._api, settings.router_pod_metrics_url, settings.router_metrics_url, owner, spec
        )
        readings, errors = [], []
        for url in urls:
            try:
                readings.append(self._probe.registered(url))
            except RouterUnreachable as exc:
                errors.append(str(exc))
        if not readings:
            return None, "; ".join(errors)
        return merge_registered(readings), None

    def _write_status(
        self,
        owner: Owner,
        spec: ModelDeploymentSpec,
        body: Obj,
        current: dict[Any, Obj],
        pods: dict[str, list[Obj]],
        apply_error: str | None = None,
    ) -> None:
        api, ns = self._api, owner.namespace
        pools: dict[str, Obj] = {}
        for (_, kind, name), obj in current.items():
            if kind != SERVING_POOL_KIND:
                continue
            role = obj["spec"]["role"]
            pools[role] = obj
            status = serving_pool_status(owner, role, obj, pods.get(role, []))
            if not contains(obj.get("status"), status):
                pools[role] = api.patch_status(MD_API_VERSION, SERVING_POOL_KIND, ns, name, status)
        router = current.get(("apps/v1", "Deployment", router_name(owner)))
        registered, router_error = None, None
        if router is not None:
            registered, router_error = self._registered(owner, spec)
        obs = Observation(
            registered=registered,
            router_error=router_error,
            apply_error=apply_error,
            serving_pools=pools,
            pool_pods=pods,
            router=router,
            cache=current.get(("apps/v1", "StatefulSet", cache_name(owner))),
            config_map=current.get(("v1", "ConfigMap", config_map_name(owner))),
            ray_cluster=current.get(("ray.io/v1", "RayCluster", ray_cluster_name(owner))),
        )
        previous = body.get("status") or {}
        status = deployment_status(owner, spec, obs, previous, self._now())
        stale = set(previous.get("pools") or {}) - set(status.get("pools") or {})
        if contains(previous, status) and not stale:
            return
        patch: dict[str, Any] = dict(status)
        if stale:
            patch["pools"] = {**status.get("pools", {}), **dict.fromkeys(stale)}
        body["status"] = api.patch_status(MD_API_VERSION, KIND, ns, owner.name, patch).get(
            "status", status
        )

    def _report_invalid(self, owner: Owner, body: Obj, message: str) -> None:
        now = self._now()
        status = {
            "observedGeneration": owner.generation,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "InvalidSpec",
                    "message": message[:2000],
                    "lastTransitionTime": now,
                    "observedGeneration": owner.generation,
                }
            ],
        }
        before: dict[str, Any] = next(
            (
                c
                for c in (body.get("status") or {}).get("conditions") or []
                if c.get("type") == "Ready"
            ),
            {},
        )
        if (before.get("reason"), before.get("message")) != ("InvalidSpec", message[:2000]):
            body["status"] = self._api.patch_status(
                MD_API_VERSION, KIND, owner.namespace, owner.name, status
            ).get("status", status)
