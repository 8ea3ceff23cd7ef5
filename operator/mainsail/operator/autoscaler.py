"""The autoscaler: each pass reads a deployment's load from its router and sets the replicas of
every pool with ``autoscaling.enabled``.

It writes only the ServingPool's ``spec.replicas`` (a merge patch, as ``kubectl scale`` does);
the reconciler already makes the RayCluster follow a ServingPool, so scaling by hand, by an
HPA or by this loop all take the same road. Its last decision per role goes to the
ModelDeployment's ``status.autoscaling`` and every change to a Kubernetes Event.

With several router replicas (`spec.router.replicas`) each pass reads every serving replica
(`router_replicas`, from the router-peers EndpointSlices) and merges their signals without
counting a worker twice (`signal_merge`).

Failure: when no router replica can be read the pass changes nothing and says so in status
(``reason``); when only some can, it may scale up on what it read but never down (the unread
replicas' held requests are missing). A stale or missing signal never scales anything down.
The scale-down history (where the raw recommendation changed, over the last
``scaleDownDelaySeconds``) is kept in memory and in ``status.autoscaling.<role>.recommendations``:
an operator that restarts picks it up from status, so the delay neither restarts nor is skipped.
Without it (a new pool) the pool holds its size for one whole delay before it may shrink.
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

from mainsail.operator.autoscale_policy import (
    PoolSignals,
    Recommendation,
    raw_replicas,
    stabilize,
)
from mainsail.operator.desired_pools import serving_pool_name
from mainsail.operator.desired_router import router_metrics_url
from mainsail.operator.kube import KubeApi, Obj
from mainsail.operator.naming import MD_API_VERSION, Owner
from mainsail.operator.router_replicas import read_every_replica
from mainsail.operator.router_signals import SignalSource
from mainsail.operator.settings import OperatorSettings
from mainsail.operator.signal_merge import merge_signals
from mainsail.spec.crd import SERVING_POOL_KIND, AutoscalerStatus
from mainsail.spec.crd import Recommendation as RecommendationPoint
from mainsail.spec.deployment import KIND, ModelDeploymentSpec
from mainsail.spec.pools import Autoscaling

log = logging.getLogger(__name__)

_IDLE = PoolSignals(0, 0, 0, 0, 0, 0)


@dataclass(frozen=True)
class ScaleChange:
    """One pool resized by a pass (for events and tests)."""

    role: str
    before: int
    after: int
    reason: str


@dataclass
class Reading:
    """A pass's inputs: the deployment, its autoscaled pools and their scraped load."""

    owner: Owner
    pools: dict[str, Autoscaling]
    previous: Mapping[str, Any]
    now: float
    wall: str
    loads: Mapping[str, PoolSignals] = field(default_factory=dict)
    unavailable: str | None = None
    partial: str | None = None  # some replicas read, not all: scale-down holds


@dataclass
class PassResult:
    """What one pass saw and did."""

    changes: list[ScaleChange] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    unavailable: str | None = None


def _rfc3339(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rfc3339_at(seconds: float) -> str:
    return _rfc3339(datetime.datetime.fromtimestamp(seconds, datetime.UTC))


def history_from_status(pool_status: Mapping[str, Any]) -> list[tuple[float, int]]:
    """The ``(time, raw)`` history a pool's autoscaling status kept (entries it cannot read
    are skipped: a hand-edited status costs at most one delay of holding)."""
    out: list[tuple[float, int]] = []
    for item in pool_status.get("recommendations") or []:
        try:
            when = datetime.datetime.strptime(str(item["time"]), "%Y-%m-%dT%H:%M:%SZ")
            out.append((when.replace(tzinfo=datetime.UTC).timestamp(), int(item["replicas"])))
        except (KeyError, TypeError, ValueError):
            continue
    return sorted(out)


class Autoscaler:
    """Runs passes; keeps each pool's recent recommendations for the scale-down delay.

    ``clock`` is wall time in seconds since the epoch: the history outlives this process.
    """

    def __init__(
        self,
        api: KubeApi,
        signals: SignalSource,
        settings: OperatorSettings,
        *,
        clock: Callable[[], float] = time.time,
        wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self._api = api
        self._signals = signals
        self._settings = settings
        self._clock = clock
        self._wall = wall
        self._history: dict[tuple[str, str, str], list[tuple[float, int]]] = {}

    def metrics_url(self, owner: Owner, spec: ModelDeploymentSpec) -> str:
        """The router Service's metrics URL for this deployment (settings' template filled in)."""
        return router_metrics_url(self._settings.router_metrics_url, owner, spec)

    async def _read_replicas(
        self, owner: Owner, spec: ModelDeploymentSpec, reading: Reading
    ) -> None:
        """Every replica's signals, merged into ``reading`` (or why they are missing)."""
        reads = await read_every_replica(
            self._api, self._settings, owner, spec, self._signals.pool_signals
        )
        if not reads.read:
            reading.unavailable = reads.unavailable
            return
        reading.loads = merge_signals(reads.read)
        reading.partial = reads.partial

    async def run_pass(self, body: Mapping[str, Any]) -> PassResult:
        """`read` then `apply` (tests; the operator holds the deployment's lock for `apply`)."""
        reading = await self.read(body)
        return PassResult() if reading is None else await asyncio.to_thread(self.apply, reading)

    async def read(self, body: Mapping[str, Any]) -> Reading | None:
        """Scrapes the deployment's router; None when no pool is autoscaled (or bad spec)."""
        owner = Owner.from_body(dict(body))
        try:
            spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return None  # the reconciler reports invalid specs
        pools = {r: p.autoscaling for r, p in spec.pools.worker_pools().items()}
        pools = {r: a for r, a in pools.items() if a.enabled}
        self._forget(owner, keep=set(pools))
        if not pools:
            return None
        previous = ((body.get("status") or {}).get("autoscaling")) or {}
        reading = Reading(owner, pools, previous, self._clock(), _rfc3339(self._wall()))
        await self._read_replicas(owner, spec, reading)
        return reading

    def apply(self, reading: Reading) -> PassResult:
        """Decides and writes each autoscaled pool's replicas and the status (blocking I/O)."""
        owner, now, wall = reading.owner, reading.now, reading.wall
        result = PassResult(unavailable=reading.unavailable)
        for role, auto in reading.pools.items():
            current = self._current(owner, role)
            if current is None:
                continue  # the reconciler has not created the ServingPool yet
            before = reading.previous.get(role) or {}
            if reading.unavailable is not None:
                result.status[role] = {
                    **before,
                    "desiredReplicas": current,
                    "recommendedReplicas": int(before.get("recommendedReplicas", current)),
                    "reason": f"signals unavailable, holding: {reading.unavailable}"[:1024],
                }
                continue
            rec: Recommendation = raw_replicas(auto, reading.loads.get(role, _IDLE))
            key = (owner.namespace, owner.name, role)
            history = self._history.get(key)
            if history is None:  # first pass since start: the history status kept
                history = self._history[key] = history_from_status(before)
            target = stabilize(auto, current, rec.replicas, history, now)
            partial_hold = reading.partial is not None and target < current
            if partial_hold:
                target = current
            if not history or history[-1][1] != rec.replicas:
                history.append((now, rec.replicas))
            self._prune(history, now, auto.scale_down_delay_seconds)
            last_scale = before.get("lastScaleTime")
            reason = rec.reason
            if target != current:
                self._api.patch(
                    MD_API_VERSION,
                    SERVING_POOL_KIND,
                    owner.namespace,
                    serving_pool_name(owner, role),
                    {"spec": {"replicas": target}},
                )
                last_scale = wall
                result.changes.append(ScaleChange(role, current, target, reason))
                log.info("%s %s: %d -> %d (%s)", owner_key(owner), role, current, target, reason)
            elif partial_hold:
                reason += f"; holding {current}: only {reading.partial}"
            elif target != rec.replicas:
                reason += (
                    f"; holding {target} (bounds {auto.min_replicas}-{auto.max_replicas}, "
                    f"scale-down delay {auto.scale_down_delay_seconds}s)"
                )
            result.status[role] = AutoscalerStatus(
                desired_replicas=target,
                recommended_replicas=rec.replicas,
                reason=reason[:1024],
                last_scale_time=last_scale,
                recommendations=[
                    RecommendationPoint(time=_rfc3339_at(t), replicas=r) for t, r in history
                ],
            ).model_dump(by_alias=True, mode="json", exclude_none=True)
        changed = {r: v for r, v in result.status.items() if reading.previous.get(r) != v}
        if changed:  # a write per change, not per pass: status stays quiet while nothing moves
            self._api.patch_status(
                MD_API_VERSION, KIND, owner.namespace, owner.name, {"autoscaling": changed}
            )
        return result

    def _current(self, owner: Owner, role: str) -> int | None:
        pool: Obj | None = self._api.get(
            MD_API_VERSION, SERVING_POOL_KIND, owner.namespace, serving_pool_name(owner, role)
        )
        if pool is None:
            return None
        return int((pool.get("spec") or {}).get("replicas", 0))

    def _forget(self, owner: Owner, keep: set[str]) -> None:
        for key in [k for k in self._history if k[:2] == owner_key(owner) and k[2] not in keep]:
            del self._history[key]

    def forget_deployment(self, namespace: str, name: str) -> None:
        """Drops a deleted deployment's history."""
        for key in [k for k in self._history if k[:2] == (namespace, name)]:
            del self._history[key]

    @staticmethod
    def _prune(history: list[tuple[float, int]], now: float, window: float) -> None:
        """Keeps the window and the newest entry before it (it proves the window is covered)."""
        start = now - window
        older = [i for i, (t, _) in enumerate(history) if t < start]
        if len(older) > 1:
            del history[: older[-1]]


def owner_key(owner: Owner) -> tuple[str, str]:
    return owner.namespace, owner.name
