"""What the worker supervisor should do next: a pure function of what it sees.

The supervisor (`supervisor.py`) keeps "N workers of each pool" alive on Ray, the same code
for `mainsail up` and for a RayCluster. Each pass it observes its members (one Ray actor per
worker replica, named `<prefix>-<role>-<index>`) and the desired count per role, and asks
`plan` for decisions:

- a member whose actor died is forgotten, and its index becomes free again, so its
  replacement gets the same name (and, locally, the same worker id: the router sees the same
  worker come back; on a cluster the worker id is the pod's name, see `ray_actor.py`);
- missing replicas are started at the lowest free indexes, at most ``max_starts`` per pass
  per role, and never for an index still backing off after a failed start (`Backoff`);
- surplus live members are stopped, those not yet serving first, then from the highest
  index down (a pool scaled down).

Desired counts come from the pools' Ray resources (`mainsail-<role>` units): locally
`mainsail up` declares one unit per replica; on a cluster every worker pod of the role's
KubeRay worker group adds one, so a ServingPool's replicas become worker pods become serving
workers. State between passes (the backoff record) travels in and out explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

INITIAL_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0


def member_name(prefix: str, role: str, index: int) -> str:
    """The Ray actor name of one replica (unique in the supervisor's Ray namespace)."""
    return f"{prefix}-{role}-{index}"


def parse_member_name(prefix: str, name: str) -> tuple[str, int] | None:
    """``(role, index)`` of a name made by `member_name`, or None for any other name."""
    head = f"{prefix}-"
    if not name.startswith(head):
        return None
    role, _, index = name[len(head) :].rpartition("-")
    if not role or not index.isdigit():
        return None
    return role, int(index)


@dataclass(frozen=True)
class Member:
    """One replica the supervisor knows of, as last observed."""

    role: str
    index: int
    alive: bool
    ready: bool = True
    """Started (model loaded, serving); a live member that is not is pending or loading."""


@dataclass(frozen=True)
class Backoff:
    """Per ``(role, index)``: when a start may be tried again and the delay after that."""

    not_before: Mapping[tuple[str, int], float] = field(default_factory=dict)
    delay: Mapping[tuple[str, int], float] = field(default_factory=dict)

    def failed(self, role: str, index: int, now: float) -> Backoff:
        """The record after a start of ``(role, index)`` failed at ``now`` (delay doubles)."""
        key = (role, index)
        delay = self.delay.get(key, INITIAL_BACKOFF_S)
        return Backoff(
            {**self.not_before, key: now + delay},
            {**self.delay, key: min(MAX_BACKOFF_S, delay * 2)},
        )

    def succeeded(self, role: str, index: int) -> Backoff:
        """The record after ``(role, index)`` started (its delay resets)."""
        key = (role, index)
        return Backoff(
            {k: v for k, v in self.not_before.items() if k != key},
            {k: v for k, v in self.delay.items() if k != key},
        )


@dataclass(frozen=True)
class Decision:
    """One pass's actions: ``(role, index)`` pairs to start, to stop, and to forget."""

    start: tuple[tuple[str, int], ...] = ()
    stop: tuple[tuple[str, int], ...] = ()
    forget: tuple[tuple[str, int], ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.start or self.stop or self.forget)


def plan(
    desired: Mapping[str, int],
    members: Iterable[Member],
    *,
    now: float = 0.0,
    backoff: Backoff | None = None,
    max_starts: int = 64,
) -> Decision:
    """Decisions that move ``members`` towards ``desired`` (role -> replica count).

    A role absent from ``desired`` wants 0. Dead members are forgotten (and may be started
    again in the same pass); live ones beyond the desired count are stopped, members not yet
    serving first (a replacement that found no free Ray resource), then highest index first.
    Starts fill the lowest free indexes, skip indexes in ``backoff`` until their time, and are
    capped at ``max_starts`` per role per pass so a burst of new Ray nodes does not
    start a thundering herd of model loads at once.
    """
    if max_starts < 1:
        raise ValueError("max_starts must be >= 1")
    wait = backoff or Backoff()
    by_role: dict[str, list[Member]] = {}
    for m in members:
        by_role.setdefault(m.role, []).append(m)
    start: list[tuple[str, int]] = []
    stop: list[tuple[str, int]] = []
    forget: list[tuple[str, int]] = []
    for role in sorted(set(desired) | set(by_role)):
        want = max(0, int(desired.get(role, 0)))
        known = by_role.get(role, [])
        forget += [(role, m.index) for m in known if not m.alive]
        alive = [m for m in known if m.alive]
        if len(alive) > want:
            surplus = sorted(alive, key=lambda m: (m.ready, -m.index))[: len(alive) - want]
            stop += [(role, m.index) for m in surplus]
            continue
        taken = {m.index for m in alive}
        missing = want - len(alive)
        index = 0
        added = 0
        while missing > 0 and added < max_starts:
            if index not in taken:
                if wait.not_before.get((role, index), 0.0) <= now:
                    start.append((role, index))
                    added += 1
                missing -= 1
            index += 1
    return Decision(tuple(start), tuple(stop), tuple(forget))
