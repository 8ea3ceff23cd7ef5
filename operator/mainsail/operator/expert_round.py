"""One expert-parallel autoscaling round over a deployment's pools, after its routers were
read: decide each pool's degree (`expert_parallel_policy.decide`, pure), ask the pool's
workers to move through the router's admin API, and say what was seen and done (a status
record per role, one `ExpertChange` per change or failed change).

Why its own module, free of Kubernetes: the operator (`expert_scaler`, which finds the router
replicas from EndpointSlices, reads the admin token from a Secret and writes
``status.expertParallel``) and `mainsail up` (which started its routers itself and writes a
local status file) run the same round; only how they find the routers and where they put the
result differ.

State: each role's cooldown and scale-down-delay clock (`ExpertState`) travels in and out
through ``states``; a role seen for the first time starts from the previous status record's
``lastChange``/``lowerSince`` (so a restarted operator neither flaps nor skips the delay).
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from mainsail.operator.expert_merge import ExpertReading, expert_signals
from mainsail.operator.expert_parallel_policy import (
    ExpertBounds,
    ExpertDecision,
    ExpertSignals,
    ExpertTargets,
    decide,
)
from mainsail.operator.expert_signals import ExpertRouter, ScaleFailed
from mainsail.operator.replica_reads import ReplicaReads
from mainsail.spec.crd import ExpertParallelStatus
from mainsail.spec.deployment import ModelDeploymentSpec

_TIME = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class ExpertChange:
    """One pool moved (``ok``) or a move that failed, for events and tests."""

    role: str
    before: int
    after: int
    reason: str
    ok: bool = True

    @property
    def message(self) -> str:
        """The Event's (or local log line's) text: ``role: expertParallel a -> b (why)``."""
        return f"{self.role}: expertParallel {self.before} -> {self.after} ({self.reason})"


@dataclass
class ExpertPass:
    """What one round saw and did: changes, and each role's status record (the CRD's
    ``status.expertParallel.<role>`` shape)."""

    changes: list[ExpertChange] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    unavailable: str | None = None


@dataclass
class ExpertState:
    """One pool's stabilisation clock (seconds since the epoch)."""

    last_change: float | None = None
    lower_since: float | None = None


def rfc3339(seconds: float) -> str:
    """``seconds`` since the epoch as the status fields' UTC time."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime(_TIME)


def seconds_of(value: object) -> float | None:
    """A status field's time back in seconds since the epoch (None when unreadable)."""
    try:
        when = datetime.datetime.strptime(str(value), _TIME)
    except ValueError:
        return None
    return when.replace(tzinfo=datetime.UTC).timestamp()


def bounds_of(spec: ModelDeploymentSpec) -> ExpertBounds | None:
    """The policy's allowed range for a deployment (None: no ``engine.expertParallel``)."""
    ep = spec.engine.expert_parallel
    if ep is None:
        return None
    return ExpertBounds(ep.min, ep.max, spec.engine.tensor_parallel)


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


@dataclass(frozen=True)
class AdminAccess:
    """How a round reaches the workers: the router's admin URL (any replica lists every
    worker and forwards a change) and the admin token, fetched only when a change is due
    (None: no credential, nothing is asked)."""

    url: str
    token: Callable[[], Awaitable[str | None]]


async def expert_round(
    reads: ReplicaReads[ExpertReading],
    bounds: ExpertBounds,
    targets: ExpertTargets,
    previous: Mapping[str, Mapping[str, Any]],
    states: MutableMapping[str, ExpertState],
    router: ExpertRouter,
    admin: AdminAccess,
    *,
    now: float,
) -> ExpertPass:
    """Decide and realize each role's degree from ``reads`` (see the module doc).

    ``previous``: role -> the last status record (kept, with the reason saying why, when no
    router could be read). A partial read may raise a degree but never lower it.
    """
    result = ExpertPass()
    if not reads.read:
        result.unavailable = reads.unavailable
        for role, before in previous.items():
            reason = f"signals unavailable, holding: {reads.unavailable}"[:1024]
            result.status[role] = {**before, "reason": reason}
        return result
    token: str | None = None
    asked_token = False
    for role, sig in sorted(expert_signals(reads.read).items()):
        before = previous.get(role) or {}
        state = states.get(role)
        if state is None:
            state = states[role] = ExpertState(
                seconds_of(before.get("lastChange")), seconds_of(before.get("lowerSince"))
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
            if not asked_token:
                token, asked_token = await admin.token(), True
            change = await _move(router, admin.url, token, role, sig, decision)
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
            last_change=rfc3339(state.last_change) if state.last_change else None,
            lower_since=rfc3339(state.lower_since) if state.lower_since else None,
        ).model_dump(by_alias=True, mode="json", exclude_none=True)
    return result


async def _move(
    router: ExpertRouter,
    admin_url: str,
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
    try:
        workers = await router.workers(admin_url, token)
        asked = [
            w.worker_id
            for w in workers
            if w.role == role and w.expert_parallel > 0 and w.expert_parallel != after
        ]
        for worker_id in asked:
            await router.scale(admin_url, token, worker_id, after)
    except ScaleFailed as exc:
        return ExpertChange(role, before, after, str(exc), ok=False)
    why = f"{decision.reason}; asked {', '.join(asked) or 'no worker'}"
    return ExpertChange(role, before, after, why)
