"""Kopf wiring, deliberately thin: every trigger asks for a reconcile pass of one deployment.

Triggers: a ModelDeployment's create/update/resume and a periodic resync (drift that raised no
event, e.g. a change made while the operator was down; `periodic.Ticker`, one loop for all
deployments, not kopf timers, which would pin a finalizer on every ModelDeployment); a
ServingPool's `spec.replicas` change (`kubectl scale`, HPA) so the RayCluster follows; and
watch events of every labelled child and worker pod (a deleted or edited child is put back at
once, readiness reaches status). All of them go through one `Coalescer`, so a deployment is
never reconciled twice at the same time.

The operator keeps kopf's bookkeeping in annotations (`operator.mainsail.dev/*`), not in
`status`, returns nothing from handlers, and disables kopf's cluster scanning: it needs no
permission on CRDs or namespaces, only on the kinds it manages (see the chart's ClusterRole).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import kopf

from mainsail.operator.autoscaler import Autoscaler
from mainsail.operator.coalescer import Coalescer
from mainsail.operator.expert_scaler import ExpertScaler
from mainsail.operator.kinds import CHILDREN, MODEL_DEPLOYMENT, POD, SERVING_POOL
from mainsail.operator.kube import KubeError
from mainsail.operator.naming import LABEL_COMPONENT, LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGED_BY
from mainsail.operator.periodic import Ticker
from mainsail.operator.reconciler import Outcome, Reconciler
from mainsail.operator.settings import OperatorSettings

ANNOTATION_PREFIX = "operator.mainsail.dev"
log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The reconciler, the autoscaler and the per-deployment coordination they share.

    A reconcile pass and an autoscaler write never overlap for one deployment (``_lock``): the
    reconciler re-applies the ServingPool with the replicas it observed, and must not observe
    them just before the autoscaler changes them.
    """

    reconciler: Reconciler
    settings: OperatorSettings
    autoscaler: Autoscaler | None = None
    experts: ExpertScaler | None = None

    def __post_init__(self) -> None:
        self.coalescer: Coalescer[tuple[str, str]] = Coalescer(self._pass)
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.ticker = Ticker(
            self.request, self.autoscale, self.settings.resync_seconds,
            self.settings.autoscale_seconds,
        )  # fmt: skip
        self._ticking: asyncio.Task[None] | None = None

    def ensure_ticking(self) -> None:
        """Start the periodic passes, from inside a kopf resource handler: the task keeps a
        copy of that handler's context, where `kopf.event` finds the operator's event queue
        (kopf sets it per resource task; the startup handlers' context lacks it)."""
        if self._ticking is None:
            self._ticking = asyncio.create_task(
                self.ticker.run(), name="mainsail-ticker", context=contextvars.copy_context()
            )

    async def stop_ticking(self) -> None:
        task, self._ticking = self._ticking, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def request(self, namespace: str | None, name: str | None) -> None:
        if namespace and name:
            await self.coalescer.request((namespace, name))

    async def autoscale(self, body: Mapping[str, Any]) -> None:
        """One autoscaler pass, then one expert-parallel pass."""
        await self._replicas(body)
        await self._experts(body)

    async def _replicas(self, body: Mapping[str, Any]) -> None:
        """Replica autoscaling: scrape outside the lock, decide and write inside it."""
        if self.autoscaler is None:
            return
        reading = await self.autoscaler.read(body)
        if reading is None:
            return
        async with self._lock((reading.owner.namespace, reading.owner.name)):
            result = await asyncio.to_thread(self.autoscaler.apply, reading)
        kbody = kopf.Body(cast(kopf.RawBody, dict(body)))
        for change in result.changes:
            verb = "ScaledUp" if change.after > change.before else "ScaledDown"
            message = f"{change.role}: {change.before} -> {change.after} ({change.reason})"
            kopf.event(kbody, type="Normal", reason=verb, message=message[:1000])

    async def _experts(self, body: Mapping[str, Any]) -> None:
        """Expert-parallel degree (its own status key: no lock against the reconciler)."""
        if self.experts is None:
            return
        result = await self.experts.run_pass(body)
        if result is None:
            return
        kbody = kopf.Body(cast(kopf.RawBody, dict(body)))
        for change in result.changes:
            message = change.message
            if change.ok:
                kopf.event(kbody, type="Normal", reason="ExpertsScaled", message=message[:1000])
            else:
                kopf.event(
                    kbody, type="Warning", reason="ExpertScaleFailed", message=message[:1000]
                )

    def forget(self, namespace: str | None, name: str | None) -> None:
        """A deployment was deleted: drop what the runtime kept for it."""
        if namespace and name:
            self._locks.pop((namespace, name), None)
            self.ticker.forget(namespace, name)
            if self.autoscaler is not None:
                self.autoscaler.forget_deployment(namespace, name)
            if self.experts is not None:
                self.experts.forget_deployment(namespace, name)

    async def _pass(self, key: tuple[str, str]) -> None:
        try:
            async with self._lock(key):
                outcome = await asyncio.to_thread(self.reconciler.reconcile, *key)
        except KubeError as exc:
            if exc.status == 403 and "NamespaceTerminating" in str(exc):
                log.debug("namespace %s is terminating; leaving %s alone", *key)
                return
            raise
        if outcome is not None:
            post_events(outcome)


def post_events(outcome: Outcome) -> None:
    """Kubernetes Events on the ModelDeployment for what a pass did."""
    body = kopf.Body(cast(kopf.RawBody, outcome.body))
    if outcome.invalid is not None:
        kopf.event(body, type="Warning", reason="InvalidSpec", message=outcome.invalid[:1000])
    if outcome.created:
        kopf.event(
            body, type="Normal", reason="Created", message="created " + ", ".join(outcome.created)
        )
    if outcome.updated:
        kopf.event(
            body, type="Normal", reason="Updated", message="updated " + ", ".join(outcome.updated)
        )
    if outcome.deleted:
        kopf.event(
            body, type="Normal", reason="Deleted", message="deleted " + ", ".join(outcome.deleted)
        )
    if outcome.drained:
        message = "drained before removal: " + ", ".join(outcome.drained)
        kopf.event(body, type="Normal", reason="Drained", message=message)
    if outcome.drain_failures:
        message = "removed without a drain: " + "; ".join(outcome.drain_failures)
        kopf.event(body, type="Warning", reason="DrainFailed", message=message[:1000])
    if outcome.failed is not None:
        message = "could not apply " + outcome.failed
        kopf.event(body, type="Warning", reason="ApplyFailed", message=message[:1000])
    if outcome.conflicts:
        message = "exists and is not ours: " + ", ".join(outcome.conflicts)
        kopf.event(body, type="Warning", reason="NameConflict", message=message)
    if outcome.ready_after != outcome.ready_before and outcome.ready_after is not None:
        reason = "Ready" if outcome.ready_after == "True" else "NotReady"
        kopf.event(
            body, type="Normal", reason=reason, message=f"Ready is now {outcome.ready_after}"
        )


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    """All handlers, registered on a fresh registry (no import-time globals)."""
    registry = kopf.OperatorRegistry()
    md = (MODEL_DEPLOYMENT.group, MODEL_DEPLOYMENT.version, MODEL_DEPLOYMENT.plural)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=ANNOTATION_PREFIX
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
        )
        settings.posting.reporting_component = MANAGED_BY
        settings.posting.level = logging.WARNING  # only kopf's own warnings become events
        settings.scanning.disabled = True
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        await runtime.stop_ticking()

    @kopf.on.resume(*md, registry=registry)
    @kopf.on.create(*md, registry=registry)
    @kopf.on.update(*md, registry=registry)
    async def deployment_changed(*, namespace: str | None, name: str, **_: Any) -> None:
        await runtime.request(namespace, name)

    @kopf.on.event(*md, registry=registry)
    async def deployment_event(
        *, type: str | None, body: kopf.Body, namespace: str | None, name: str, **_: Any
    ) -> None:
        if type == "DELETED":
            runtime.forget(namespace, name)
        elif not body.get("metadata", {}).get("deletionTimestamp"):
            runtime.ticker.seen(dict(body))
            runtime.ensure_ticking()

    pool = (SERVING_POOL.group, SERVING_POOL.version, SERVING_POOL.plural)

    @kopf.on.field(*pool, field="spec.replicas", registry=registry)
    async def pool_scaled(
        *, namespace: str | None, spec: kopf.Spec, old: Any, new: Any, **_: Any
    ) -> None:
        log.info("ServingPool of %s scaled from %s to %s", spec.get("deployment"), old, new)
        await runtime.request(namespace, str(spec.get("deployment", "")))

    children = {LABEL_MANAGED_BY: MANAGED_BY}
    for child in CHILDREN:

        @kopf.on.event(child.group, child.version, child.plural, labels=children, registry=registry)
        async def child_event(
            *, namespace: str | None, labels: Mapping[str, str], **_: Any
        ) -> None:
            await runtime.request(namespace, labels.get(LABEL_DEPLOYMENT))

    workers = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: "worker"}

    @kopf.on.event(POD.group, POD.version, POD.plural, labels=workers, registry=registry)
    async def worker_pod_event(
        *, namespace: str | None, labels: Mapping[str, str], **_: Any
    ) -> None:
        await runtime.request(namespace, labels.get(LABEL_DEPLOYMENT))

    return registry
