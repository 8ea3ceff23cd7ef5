"""Keep N workers of each pool alive on Ray: one supervisor for `mainsail up` and clusters.

The decisions are `supervisor_plan.plan` (pure); this module observes Ray and carries them
out. A member is one worker actor (`ray_actor.WorkerActor`) named `<prefix>-<role>-<index>`
in the supervisor's Ray namespace. For each member the supervisor holds two object refs: the
actor's `start` (model loaded, Worker API serving, registration running) and its `watch`,
which only resolves when the actor is stopped, and fails the moment the actor's process dies.
Waiting on those refs is how a crash is noticed at once; the replacement gets the same name,
loads, and registers with the router again, while the router has already moved the dead
worker's requests elsewhere.

Desired counts are read from Ray (`ray_desired`): the total of each pool's custom resource
`mainsail-<role>` over the live nodes. `mainsail up` declares one unit per replica on its
local node; on a cluster each worker pod of the role's KubeRay worker group brings one, so
`kubectl scale servingpool` -> worker-group replicas -> pods -> resource units -> workers.

On a cluster the supervisor runs in the Ray head pod (`python -m mainsail.workers.supervisor`,
see `cluster_supervisor.py`) and its actors are detached, so a restarted supervisor adopts the
running workers (by name) instead of restarting them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mainsail.workers.ray_actor import actor_class, pool_resource
from mainsail.workers.supervisor_plan import (
    Backoff,
    Decision,
    Member,
    member_name,
    parse_member_name,
    plan,
)
from mainsail.workers.worker_spec import WorkerSpec

log = logging.getLogger(__name__)

SpecFactory = Callable[[str, int], WorkerSpec]
"""``(role, index) -> WorkerSpec`` of that replica."""


class WorkerStartFailed(RuntimeError):
    """A worker's start raised (bad checkpoint, refused registration, ...)."""


@dataclass
class _Slot:
    handle: Any
    start_ref: Any
    watch_ref: Any
    address: str | None = None
    adopted: bool = False


@dataclass(frozen=True)
class Placement:
    """Ray options of one role's actors (the custom resource unit is always added)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0


def ray_desired(roles: list[str]) -> dict[str, int]:
    """Role -> units of `mainsail-<role>` on the live Ray nodes."""
    import ray

    total: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return {role: int(total.get(pool_resource(role), 0)) for role in roles}


class WorkerSupervisor:
    """Starts, watches, replaces and stops the worker actors of one deployment."""

    def __init__(
        self,
        prefix: str,
        roles: list[str],
        make_spec: SpecFactory,
        *,
        placement: Mapping[str, Placement] | None = None,
        detached: bool = False,
        desired: Callable[[], Mapping[str, int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        startup_timeout: float = 600.0,
    ) -> None:
        self.prefix = prefix
        self.roles = list(roles)
        self._make_spec = make_spec
        self._placement = dict(placement or {})
        self._detached = detached
        self._desired = desired or (lambda: ray_desired(self.roles))
        self._clock = clock
        self._startup_timeout = startup_timeout
        self._slots: dict[tuple[str, int], _Slot] = {}
        self._backoff = Backoff()
        self._started_at: dict[tuple[str, int], float] = {}
        self.errors: dict[tuple[str, int], str] = {}
        self.restarts = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ observe

    def adopt(self) -> int:
        """Take over this prefix's named actors already running (a restarted supervisor)."""
        import ray

        adopted = 0
        for name in ray.util.list_named_actors():
            parsed = parse_member_name(self.prefix, name)
            if parsed is None or parsed[0] not in self.roles or parsed in self._slots:
                continue
            with contextlib.suppress(ValueError):
                handle = ray.get_actor(name)
                slot = _Slot(handle, handle.ping.remote(), handle.watch.remote(), adopted=True)
                self._slots[parsed] = slot
                adopted += 1
        return adopted

    def members(self) -> list[Member]:
        """Each slot's state; resolves finished refs (never blocks)."""
        import ray

        out = []
        for (role, index), slot in list(self._slots.items()):
            alive = True
            ready, _ = ray.wait([slot.watch_ref], timeout=0)
            if ready:
                alive = False
                try:
                    ray.get(slot.watch_ref)
                except Exception as exc:  # RayActorError and friends: the actor is gone
                    log.warning("worker %s died: %s", member_name(self.prefix, role, index), exc)
                    if slot.address is None:  # died while starting: back off before retrying
                        self._backoff = self._backoff.failed(role, index, self._clock())
                    self.restarts += 1
            elif slot.address is None:
                alive = self._check_start(role, index, slot)
            out.append(Member(role, index, alive, ready=slot.address is not None))
        return out

    def _check_start(self, role: str, index: int, slot: _Slot) -> bool:
        """Whether the slot is still alive after looking at its `start` ref."""
        import ray

        done, _ = ray.wait([slot.start_ref], timeout=0)
        if not done:
            since = self._started_at.get((role, index))
            if since is not None and self._clock() - since > self._startup_timeout:
                self.errors[(role, index)] = f"not started after {self._startup_timeout:g} s"
                self._fail(role, index, slot)
                return False
            return True
        try:
            slot.address = str(ray.get(slot.start_ref))
        except Exception as exc:
            self.errors[(role, index)] = f"{type(exc).__name__}: {exc}"
            log.warning("worker %s failed to start: %s", member_name(self.prefix, role, index), exc)
            self._fail(role, index, slot)
            return False
        self._backoff = self._backoff.succeeded(role, index)
        self.errors.pop((role, index), None)
        return True

    def _fail(self, role: str, index: int, slot: _Slot) -> None:
        import ray

        self._backoff = self._backoff.failed(role, index, self._clock())
        with contextlib.suppress(Exception):
            ray.kill(slot.handle)

    # ------------------------------------------------------------------ act

    def step(self) -> Decision:
        """One observe -> plan -> act pass."""
        with self._lock:
            members = self.members()
            decision = plan(self._desired(), members, now=self._clock(), backoff=self._backoff)
            for key in decision.forget:
                self._slots.pop(key, None)
            for role, index in decision.stop:
                self._stop_slot(self._slots.pop((role, index)))
            for role, index in decision.start:
                self._start(role, index)
            return decision

    def _start(self, role: str, index: int) -> None:
        place = self._placement.get(role, Placement())
        cls = actor_class(
            num_cpus=place.num_cpus,
            num_gpus=place.num_gpus,
            resources={pool_resource(role): 1.0},
        )
        name = member_name(self.prefix, role, index)
        options: dict[str, Any] = {"name": name}
        if self._detached:
            options["lifetime"] = "detached"
        spec = self._make_spec(role, index)
        handle = cls.options(**options).remote(spec.model_dump_json())
        self._slots[(role, index)] = _Slot(handle, handle.start.remote(), handle.watch.remote())
        self._started_at[(role, index)] = self._clock()
        log.info("starting worker %s", name)

    @staticmethod
    def _stop_slot(slot: _Slot) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.get(slot.handle.stop.remote(), timeout=10)
        with contextlib.suppress(Exception):
            ray.kill(slot.handle)

    # ------------------------------------------------------------------ drive

    def wait_ready(self, timeout: float, progress: Callable[[str], None] = lambda _: None) -> None:
        """Step until every desired worker serves and is registered; raise on a failed start
        (with the worker's error) or after ``timeout`` seconds."""
        import ray

        deadline = time.monotonic() + timeout
        registered: set[tuple[str, int]] = set()
        while True:
            self.step()
            if self.errors:
                (role, index), error = next(iter(self.errors.items()))
                raise WorkerStartFailed(f"worker {member_name(self.prefix, role, index)}: {error}")
            want = sum(self._desired().values())
            for key, slot in self._slots.items():
                if slot.address is not None and key not in registered:
                    left = max(1.0, deadline - time.monotonic())
                    ray.get(slot.handle.wait_registered.remote(left), timeout=left + 5)
                    registered.add(key)
                    progress(f"Worker {member_name(self.prefix, *key)} registered")
            if len(registered) >= want and all(s.address for s in self._slots.values()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(registered)}/{want} workers registered after {timeout} s")
            self.wait_for_change(0.2)

    def wait_for_change(self, timeout: float) -> None:
        """Block until some member's start or watch ref resolves, or ``timeout``."""
        import ray

        refs = [r for s in self._slots.values() for r in (s.start_ref, s.watch_ref)]
        if refs:
            ray.wait(refs, num_returns=1, timeout=timeout)
        else:
            time.sleep(timeout)

    def run(self, stop: threading.Event, period: float = 1.0) -> None:
        """Keep the pools at their desired size until ``stop`` is set (errors are logged)."""
        while not stop.is_set():
            try:
                self.step()
                self.wait_for_change(period)
            except Exception:  # keep supervising whatever one pass hit
                if stop.is_set():
                    return
                log.exception("supervisor pass failed")
                stop.wait(period)

    def start_background(self, period: float = 1.0) -> tuple[threading.Thread, threading.Event]:
        """`run` in a daemon thread; set the returned event to stop it."""
        stop = threading.Event()
        thread = threading.Thread(
            target=self.run, args=(stop, period), name="mainsail-supervisor", daemon=True
        )
        thread.start()
        return thread, stop

    def handles(self) -> dict[tuple[str, int], Any]:
        """The current actor handle of each member."""
        with self._lock:
            return {key: slot.handle for key, slot in self._slots.items()}

    def stop_all(self) -> None:
        """Stop every member (deregistering each from the router)."""
        with self._lock:
            for slot in self._slots.values():
                self._stop_slot(slot)
            self._slots.clear()
