"""The expert-parallel autoscaler: each pass reads a sharded mixture-of-experts deployment's
expert figures and load from its router, decides each pool's degree
(`expert_parallel_policy.decide`, pure) and asks the pool's workers to move there through the
router's admin API (`POST /workers/<id>/experts` → `Worker.ScaleExperts` → the engine switches
between two steps). Its last decision per role goes to the ModelDeployment's
``status.expertParallel`` and every change (or failed change) becomes an Event.

Runs for every deployment with ``spec.engine.expertParallel`` set, on the replica
autoscaler's tick (`autoscaleSeconds`). It writes only its own status key, so it needs no lock
against the reconciler.

With several router replicas (`spec.router.replicas`) each pass reads every serving replica
(`router_replicas.read_every_replica`, as the replica autoscaler does) and merges them without
counting a worker twice (`expert_merge`: worker figures once, held requests summed).

Failure and security: an unreadable router changes nothing (status says so); when only some
replicas can be read a pass may raise the degree but never lower it (the unread replicas'
held requests are missing). Without the router's admin token (read by name from the
deployment's credentials Secret, or the Secret ``router.auth.secretName`` names) nothing is
asked: no credential, no rescale. The admin calls go through the router Service (any replica
lists the workers and forwards a change to one). The cooldown
and scale-down delay state (``lastChange``, ``lowerSince``) is kept in memory and in status,
so an operator that restarts neither flaps nor skips the delay.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from mainsail.operator.desired_router import router_metrics_url
from mainsail.operator.desired_secrets import admin_token
from mainsail.operator.expert_merge import expert_signals
from mainsail.operator.expert_parallel_policy import (
    ExpertBounds,
    ExpertDecision,
    ExpertSignals,
    ExpertTargets,
    decide,
)
from mainsail.operator.expert_signals import ExpertRouter, ScaleFailed
from mainsail.operator.kube import KubeApi
from mainsail.operator.naming import MD_API_VERSION, Owner
from mainsail.operator.plan import controlled_by
from mainsail.operator.router_replicas import read_every_replica
from mainsail.operator.settings import OperatorSettings
from mainsail.spec.crd import ExpertParallelStatus
from mainsail.spec.deployment import KIND, ModelDeploymentSpec
from mainsail.spec.worker_auth import secret_name

log = logging.getLogger(__name__)

_TIME = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class ExpertChange:
    """One pool moved (``ok``) or a move that failed, for events and tests."""

    role: str
    before: int
    after: int
    reason: str
    ok: bool = True


@dataclass
class ExpertPass:
    """What one pass saw and did."""

    changes: list[ExpertChange] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    unavailable: str | None = None


@dataclass
class _State:
    last_change: float | None = None
    lower_since: float | None = None


def _rfc3339(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime(_TIME)


def _seconds(value: object) -> float | None:
    try:
        when = datetime.datetime.strptime(str(value), _TIME)
    except ValueError:
        return None
    return when.replace(tzinfo=datetime.UTC).timestamp()


def targets_of(spec: ModelDeploymentSpec) -> ExpertTargets:
    """The policy's knobs for a deployment (``engine.expertParallel``'s)."""
    ep = spec.engine.expert_parallel
    if ep is None:
        return ExpertTargets()
    return ExpertTargets(
        requests_per_rank=ep.target_requests_per_rank,
        cooldown_seconds=float(ep.cooldown_seconds),
        scale_down_delay_seconds=float(ep.scale_down_delay_seconds),
    )


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
        self._state: dict[tuple[str, str, str], _State] = {}

    async def run_pass(self, body: Mapping[str, Any]) -> ExpertPass | None:
        """One pass over a deployment; None when it has no expert-parallel range."""
        owner = Owner.from_body(dict(body))
        try:
            spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return None  # the reconciler reports invalid specs
        ep = spec.engine.expert_parallel
        if ep is None:
            self.forget_deployment(owner.namespace, owner.name)
            return None
        bounds = ExpertBounds(ep.min, ep.max, spec.engine.tensor_parallel)
        targets = targets_of(spec)
        previous: Mapping[str, Any] = (body.get("status") or {}).get("expertParallel") or {}
        result = ExpertPass()
        reads = await read_every_replica(
            self._api, self._settings, owner, spec, self._router.expert_reading
        )
        if not reads.read:
            result.unavailable = reads.unavailable
            for role, before in previous.items():
                reason = f"signals unavailable, holding: {reads.unavailable}"[:1024]
                result.status[role] = {**before, "reason": reason}
            await self._write(owner, previous, result.status)
            return result
        signals = expert_signals(reads.read)
        now = self._clock()
        token: str | None = None
        for role, sig in sorted(signals.items()):
            before = previous.get(role) or {}
            state = self._state.setdefault(
                (owner.namespace, owner.name, role),
                _State(_seconds(before.get("lastChange")), _seconds(before.get("lowerSince"))),
            )
            decision = decide(
                bounds, targets, sig, now=now,
                last_change=state.last_change, lower_since=state.lower_since,
            )  # fmt: skip
            partial_hold = reads.partial is not None and decision.target < sig.current
            # a held scale-down keeps its delay running (the policy clears it when it moves)
            lowered = state.lower_since if state.lower_since is not None else now
            state.lower_since = lowered if partial_hold else decision.lower_since
            target = int(before.get("target", sig.current)) if sig.switching else sig.current
            reason = decision.reason
            if partial_hold:
                reason = f"{reason}; holding ep {sig.current}: only {reads.partial}"
            elif decision.target != sig.current:
                if token is None:
                    token = await asyncio.to_thread(self._admin_token, owner, spec)
                change = await self._move(owner, spec, token, role, sig, decision)
                result.changes.append(change)
                state.last_change = now  # a failure backs off for a cooldown too
                if change.ok:
                    target = decision.target
                else:
                    reason = f"{reason}; not changed: {change.reason}"
            result.status[role] = ExpertParallelStatus(
                current=sig.current,
                target=target,
                recommended=decision.recommended,
                reason=reason[:1024],
                imbalance=round(decision.imbalance, 3),
                last_change=_rfc3339(state.last_change) if state.last_change else None,
                lower_since=_rfc3339(state.lower_since) if state.lower_since else None,
            ).model_dump(by_alias=True, mode="json", exclude_none=True)
        await self._write(owner, previous, result.status)
        return result

    async def _move(
        self,
        owner: Owner,
        spec: ModelDeploymentSpec,
        token: str | None,
        role: str,
        sig: ExpertSignals,
        decision: ExpertDecision,
    ) -> ExpertChange:
        """Ask every worker of ``role`` not at the target to move there."""
        before, after = sig.current, decision.target
        if token is None:
            why = "no router admin credential to ask the workers with"
            return ExpertChange(role, before, after, why, ok=False)
        admin = router_metrics_url(self._settings.router_admin_url, owner, spec)
        try:
            workers = await self._router.workers(admin, token)
            asked = [
                w.worker_id
                for w in workers
                if w.role == role and w.expert_parallel > 0 and w.expert_parallel != after
            ]
            for worker_id in asked:
                await self._router.scale(admin, token, worker_id, after)
        except ScaleFailed as exc:
            log.warning("%s/%s %s: ep %d -> %d failed: %s", *_key(owner), role, before, after, exc)
            return ExpertChange(role, before, after, str(exc), ok=False)
        log.info("%s/%s %s: ep %d -> %d (%s)", *_key(owner), role, before, after, decision.reason)
        why = f"{decision.reason}; asked {', '.join(asked) or 'no worker'}"
        return ExpertChange(role, before, after, why)

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
        for key in [k for k in self._state if k[:2] == (namespace, name)]:
            del self._state[key]


def _key(owner: Owner) -> tuple[str, str]:
    return owner.namespace, owner.name
