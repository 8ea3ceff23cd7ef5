"""The Ray side of a sharded worker: rank actors, their placement groups, and collective
calls that notice a dead rank at once.

Placement: the tensor-parallel ranks of one worker form one placement group (one bundle per
rank, packed), so they are scheduled together or not at all. Expert-only ranks (elastic
expert parallelism adds and removes them) each get a one-bundle group of their own, so one
can be released without touching the others. A bundle asks for ``resources`` (CPU, and GPU
when the shard runs on CUDA) on the worker's own Ray node.

Calls go to several ranks at once and are awaited with `ray.wait`, one result at a time: if
any rank fails (its process died, or a collective failed because a peer died) the whole
group is torn down and `ShardLost` is raised, instead of waiting on ranks stuck in a
collective with a dead peer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from mainsail.workers.engine.errors import EngineFatalError
from mainsail.workers.rank_actor import RankActor, RankSetup

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 300.0
CALL_TIMEOUT_S = 600.0
# How much lower than serving the ranks run preparation for a new placement (0 = as high;
# 10 measured no better for serving and slower to scale up on two shared cores).
PREPARE_NICE = 0


def _this_node() -> dict[str, float]:
    """A sliver of this Ray node's own ``node:<ip>`` resource, so every rank of a worker lands
    on the node (the pod) that holds the worker: on a cluster each worker pod offers CPUs for
    its own ranks only, and a rank placed on another worker's pod would take that worker's
    CPUs or GPUs."""
    import ray

    ip: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    return {f"node:{ip}": 0.001}


class ShardLost(EngineFatalError):
    """A rank of the sharded worker failed; the worker cannot serve any more."""


@dataclass
class RankHandle:
    """One live rank: its number, actor and the placement group it occupies."""

    rank: int
    actor: Any
    group: Any


@dataclass(frozen=True)
class Liveness:
    """What one liveness query heard: the ranks Ray reports dead (rank, why) and the ranks
    that had not answered when the wait ended."""

    dead: tuple[tuple[int, str], ...] = ()
    silent: tuple[int, ...] = ()


@dataclass(frozen=True)
class LivenessQuery:
    """A liveness question sent to some ranks (`RayRanks.ask_alive`), answers pending."""

    handles: tuple[RankHandle, ...]
    refs: tuple[Any, ...]

    def hear(self, timeout: float) -> Liveness:
        """Wait up to ``timeout`` s for the answers. Touches no worker state, so it may run
        off the engine thread: a hung rank then holds no step."""
        import ray

        ready, _ = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        answered = set(ready)
        dead: list[tuple[int, str]] = []
        silent: list[int] = []
        for handle, ref in zip(self.handles, self.refs, strict=True):
            if ref not in answered:
                silent.append(handle.rank)
                continue
            try:
                ray.get(ref)
            except Exception as exc:
                dead.append((handle.rank, f"{type(exc).__name__}: {exc}"))
        return Liveness(tuple(dead), tuple(silent))


class RayRanks:
    """Creates, calls and releases the rank actors of one sharded worker."""

    def __init__(self, setup: RankSetup, resources: Mapping[str, float]) -> None:
        self.setup = setup
        self.resources = dict(resources)
        self.lost: str | None = None
        self.prepare_nice = PREPARE_NICE
        self._members: dict[int, set[int]] = {}

    def spawn(self, ranks: Sequence[int], build_nice: int | None = None) -> list[RankHandle]:
        """Start actors for ``ranks`` in one new placement group (waits until placed).

        ``build_nice``: None = each shard is built before its actor's constructor returns
        (the worker's first ranks); a number = built on a thread of its own with that added
        nice value, calls waiting for it (ranks added to a serving worker, warm spares; see
        `mainsail.workers.rank_actor`)."""
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = {**self.resources, **_this_node()}
        group = placement_group([dict(bundle) for _ in ranks], strategy="PACK")
        if not group.wait(READY_TIMEOUT_S):
            ray.util.remove_placement_group(group)
            raise ShardLost(
                f"no room for {len(ranks)} ranks of {self.resources} within {READY_TIMEOUT_S} s"
            )
        options: dict[str, Any] = {"max_concurrency": 2}
        cls = ray.remote(**options)(RankActor)
        handles = []
        for i, rank in enumerate(ranks):
            actor = cls.options(
                num_cpus=self.resources.get("CPU", 0.0),
                num_gpus=self.resources.get("GPU", 0.0),
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=group, placement_group_bundle_index=i
                ),
            ).remote(self.setup, rank, self.prepare_nice, build_nice)
            handles.append(RankHandle(rank, actor, group))
        self._members[id(group)] = set(ranks)
        return handles

    def call(
        self, handles: Sequence[RankHandle], method: str, *args: Any, each: Sequence[Any] = ()
    ) -> list[Any]:
        """``method`` on every rank at once (``each[i]`` appended to rank ``i``'s arguments);
        results in order. Any failure tears the group down and raises `ShardLost`."""
        import ray

        if self.lost is not None:
            raise ShardLost(self.lost)
        extra = [(e,) for e in each] if each else [() for _ in handles]
        refs = [h.actor.call.remote(method, *args, *x) for h, x in zip(handles, extra, strict=True)]
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=CALL_TIMEOUT_S)
                if not ready:
                    raise TimeoutError(f"{method} did not finish within {CALL_TIMEOUT_S} s")
                ray.get(ready[0])
            return list(ray.get(refs))
        except Exception as exc:
            self.lost = f"rank call {method} failed: {type(exc).__name__}: {exc}"[:2000]
            log.error("sharded worker lost a rank: %s", self.lost)
            raise ShardLost(self.lost) from exc

    def ask_alive(self, handles: Sequence[RankHandle]) -> LivenessQuery:
        """Send each rank a question it answers at once (`RankActor.ready`), without waiting
        for the answers (`LivenessQuery.hear` waits, on any thread). Why: an idle worker runs
        no steps, so without this a dead or hung rank is found only by the next request."""
        if self.lost is not None:
            raise ShardLost(self.lost)
        return LivenessQuery(tuple(handles), tuple(h.actor.ready.remote() for h in handles))

    def lose(self, reason: str) -> NoReturn:
        """Mark the worker lost for ``reason`` (every later call fails) and raise `ShardLost`."""
        self.lost = reason[:2000]
        log.error("sharded worker lost a rank: %s", self.lost)
        raise ShardLost(self.lost)

    def renumber(self, handle: RankHandle, rank: int) -> bool:
        """Give a started, not yet joined rank (a warm spare) the number ``rank``; waits
        until its process has finished importing (`ShardRank.renumber`). False, and the
        spare released, if it failed: a spare serves nothing, so unlike a member's its loss
        must not end the worker (the caller starts a new rank instead)."""
        import ray

        try:
            ray.get(handle.actor.call.remote("renumber", rank), timeout=CALL_TIMEOUT_S)
        except Exception as exc:
            log.warning("warm spare rank %d is gone (%s); a new rank is started", handle.rank, exc)
            self.release([handle])
            return False
        members = self._members.get(id(handle.group))
        if members is not None:
            members.discard(handle.rank)
            members.add(rank)
        handle.rank = rank
        return True

    def release(self, handles: Sequence[RankHandle]) -> None:
        """Kill these ranks' actors; remove each placement group once all its ranks are gone."""
        import ray

        groups = {}
        for h in handles:
            try:
                ray.kill(h.actor, no_restart=True)
            except Exception as exc:
                log.warning("killing rank %d: %s", h.rank, exc)
            members = self._members.get(id(h.group), set())
            members.discard(h.rank)
            if not members:
                groups[id(h.group)] = h.group
                self._members.pop(id(h.group), None)
        for group in groups.values():
            try:
                ray.util.remove_placement_group(group)
            except Exception as exc:
                log.warning("removing a placement group: %s", exc)
