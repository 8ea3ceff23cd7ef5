"""The expert-parallel autoscaler: each pass reads a sharded mixture-of-experts deployment's
expert figures and load from its router, decides each pool's degree
(`expert_parallel_policy.decide`, pure) and asks the pool's workers to move there through the
router's admin API (`POST /workers/<id>/experts` → `Worker.ScaleExperts` → the engine switches
between two steps). Its last decision per role goes to the ModelDeployment's
``status.expertParallel`` and every change (or failed change) becomes an Event.

Runs for every deployment with ``spec.engine.expertParallel`` set, on the replica
autoscaler's tick (`autoscaleSeconds`). It writes only its own status key, so it needs no lock
against the reconciler.

What is Kubernetes-specific lives here: finding the router replicas (the router-peers
EndpointSlices, `router_replicas.read_every_replica`, as the replica autoscaler does), the
admin token (read by name from the deployment's credentials Secret, or the Secret
``router.auth.secretName`` names) and the status write. The round itself (merge the replicas'
readings without counting a worker twice, decide, ask, say why) is `expert_round`, which
`mainsail up` runs too.

Failure and security: an unreadable router changes nothing (status says so); when only some
replicas can be read a pass may raise the degree but never lower it (the unread replicas'
held requests are missing). Without the admin token nothing is asked: no credential, no
rescale. The admin calls go through the router Service (any replica lists the workers and
forwards a change to one). The cooldown and scale-down delay state (``lastChange``,
``lowerSince``) is kept in memory and in status, so an operator that restarts neither flaps
nor skips the delay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from mainsail.operator.desired_router import router_metrics_url
from mainsail.operator.desired_secrets import admin_token
from mainsail.operator.expert_round import (
    AdminAccess,
    ExpertChange,
    ExpertPass,
    ExpertState,
    bounds_of,
    expert_round,
    targets_of,
)
from mainsail.operator.expert_signals import ExpertRouter
from mainsail.operator.kube import KubeApi
from mainsail.operator.naming import MD_API_VERSION, Owner
from mainsail.operator.plan import controlled_by
from mainsail.operator.router_replicas import read_every_replica
from mainsail.operator.settings import OperatorSettings
from mainsail.spec.deployment import KIND, ModelDeploymentSpec
from mainsail.spec.worker_auth import secret_name

__all__ = ["ExpertChange", "ExpertPass", "ExpertScaler", "targets_of"]

log = logging.getLogger(__name__)


class ExpertScaler:
    """Runs expert-parallel passes; keeps each pool's cooldown and delay state.

    ``clock`` is wall time in seconds since the epoch (the state outlives this process).
    """

    def __init__(
        self,
        api: KubeApi,
        router: ExpertRouter,
        settings: OperatorSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self._router = router
        self._settings = settings
        self._clock = clock
        self._state: dict[tuple[str, str], dict[str, ExpertState]] = {}

    async def run_pass(self, body: Mapping[str, Any]) -> ExpertPass | None:
        """One pass over a deployment; None when it has no expert-parallel range."""
        owner = Owner.from_body(dict(body))
        try:
            spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return None  # the reconciler reports invalid specs
        bounds = bounds_of(spec)
        if bounds is None:
            self.forget_deployment(owner.namespace, owner.name)
            return None
        previous: Mapping[str, Any] = (body.get("status") or {}).get("expertParallel") or {}
        reads = await read_every_replica(
            self._api, self._settings, owner, spec, self._router.expert_reading
        )

        async def token() -> str | None:
            return await asyncio.to_thread(self._admin_token, owner, spec)

        admin = AdminAccess(router_metrics_url(self._settings.router_admin_url, owner, spec), token)
        result = await expert_round(
            reads, bounds, targets_of(spec), previous,
            self._state.setdefault((owner.namespace, owner.name), {}),
            self._router, admin, now=self._clock(),
        )  # fmt: skip
        for change in result.changes:
            if change.ok:
                log.info("%s/%s %s", owner.namespace, owner.name, change.message)
            else:
                log.warning("%s/%s %s", owner.namespace, owner.name, change.message)
        await self._write(owner, previous, result.status)
        return result

    def _admin_token(self, owner: Owner, spec: ModelDeploymentSpec) -> str | None:
        """The router's admin token, read by name (the operator may not list Secrets)."""
        named = spec.router.auth.secret_name
        if named is not None:
            return admin_token(self._api.get("v1", "Secret", owner.namespace, named))
        secret = self._api.get("v1", "Secret", owner.namespace, secret_name(owner.name))
        if secret is None or not controlled_by(secret, owner):
            return None
        return admin_token(secret)

    async def _write(
        self, owner: Owner, previous: Mapping[str, Any], status: Mapping[str, Any]
    ) -> None:
        changed = {r: v for r, v in status.items() if previous.get(r) != v}
        if changed:  # a write per change: status stays quiet while nothing moves
            await asyncio.to_thread(
                self._api.patch_status,
                MD_API_VERSION, KIND, owner.namespace, owner.name, {"expertParallel": changed},
            )  # fmt: skip

    def forget_deployment(self, namespace: str, name: str) -> None:
        """Drops a deleted deployment's state."""
        self._state.pop((namespace, name), None)
