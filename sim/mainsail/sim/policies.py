"""Routing policies by name: the seam between the event loop and whoever chooses a worker.

Why a registry: one simulation run compares several policies on identical inputs, so the CLI
names them (``--policy ours,round-robin``) and each run builds a fresh instance around fresh
workers, the run's random source and the virtual clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol

from mainsail.sim.baselines import (
    LeastLoadedPolicy,
    LeastWorkPolicy,
    PrefixHashPolicy,
    RandomPolicy,
    RoundRobinPolicy,
)
from mainsail.sim.request import SimRequest
from mainsail.sim.router_policy import RouterPolicy
from mainsail.sim.worker import SimWorker
from mainsail.spec.routing_profile import RoutingProfile


class Policy(Protocol):
    """Chooses a worker index for each request (None: hold it at the router for now)."""

    name: str

    def route(self, req: SimRequest, now: float) -> int | None: ...


POLICY_NAMES = (
    "ours",
    "ours-approx",
    "prefix-hash",
    "least-loaded",
    "round-robin",
    "random",
    "least-work",
)


def make_policy(
    name: str,
    workers: Sequence[SimWorker],
    rng: random.Random,
    clock: Callable[[], float],
    routing: RoutingProfile | None = None,
    changed: set[int] | None = None,
    *,
    tier_aware: bool = True,
) -> Policy:
    """A fresh policy instance; ``ValueError`` names the known policies.

    ``changed`` is the set the workers add their index to when their state changes; the
    router policy uses it to refresh only stale snapshots. ``tier_aware`` False makes the router
    ignore what the shared KV tier holds (device-only scoring, for comparison).
    """
    if name == "ours":
        return RouterPolicy(
            workers, rng, clock, routing=routing, changed=changed, tier_aware=tier_aware
        )
    if name == "ours-approx":
        return RouterPolicy(workers, rng, clock, routing=routing, approximate=True, changed=changed)
    if name == "prefix-hash":
        return PrefixHashPolicy(workers, rng)
    if name == "least-work":
        return LeastWorkPolicy(workers, rng)
    if name == "least-loaded":
        return LeastLoadedPolicy(workers, rng)
    if name == "round-robin":
        return RoundRobinPolicy(workers, rng)
    if name == "random":
        return RandomPolicy(workers, rng)
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")
