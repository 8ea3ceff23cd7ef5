"""Which worker pods a shrinking pool removes: a pure function of the pods and the counts.

Why the operator chooses (and not KubeRay at random): a worker must be drained before its pod
goes, so that its requests move to the workers that stay (the router's migration planner
spreads them and each moves with its KV, token-identical; the drain call returns once they
moved) instead of failing. The reconciler drains each newly chosen pod's worker
through the router's admin API (`POST /workers/<pod>/drain`; on a cluster a worker's id is its
pod's name) and only then hands the names to KubeRay in the worker group's
`scaleStrategy.workersToDelete` together with the lower `replicas`. Names stay in that list
while their pods still exist, so a later pass never lets KubeRay pick different ones.

Preference: pods that are not Ready first (nothing to drain), then the youngest (the oldest
workers hold the warmest KV caches).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mainsail.operator.status import pod_ready

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class ScaleDown:
    """The worker group's `workersToDelete`, and the names in it that are new (to drain)."""

    workers_to_delete: tuple[str, ...] = ()
    new: tuple[str, ...] = ()


def _name(pod: Obj) -> str:
    return str((pod.get("metadata") or {}).get("name", ""))


def _created(pod: Obj) -> str:
    return str((pod.get("metadata") or {}).get("creationTimestamp", ""))


def choose_removals(
    pods: Sequence[Obj], previous: Sequence[str], current: int, desired: int
) -> ScaleDown:
    """The pods to remove when a group goes from ``current`` replicas (the RayCluster's
    worker group as it is) to ``desired`` (the ServingPool), given ``previous`` (its
    `workersToDelete` as it is) and the group's pods."""
    existing = {_name(p) for p in pods}
    kept = tuple(name for name in previous if name in existing)
    surplus = current - desired
    if surplus <= 0:
        return ScaleDown(kept)
    live = [
        p
        for p in pods
        if _name(p) not in kept and not (p.get("metadata") or {}).get("deletionTimestamp")
    ]
    # Not Ready first, then youngest: sort by (ready, creation) with the youngest first.
    live.sort(key=_created, reverse=True)
    live.sort(key=pod_ready)
    new = tuple(_name(p) for p in live[:surplus])
    return ScaleDown(kept + new, new)
