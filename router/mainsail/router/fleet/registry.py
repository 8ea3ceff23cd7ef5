"""Which workers exist, what they can serve, and how loaded they were last heard.

Workers register themselves (Registry.Register) and heartbeat with a load snapshot. The
registry refuses a worker whose model or KV hashing parameters differ from the router's —
loudly, with the reason in the reply — because a silent mismatch makes KV-aware routing
degrade without anyone noticing. Workers not heard from within `expiry` seconds are dropped.
The clock is injected so tests and the simulator control time.

A registered id belongs to its worker while that worker is alive: a newcomer registering the
same id from another address is refused with a `retry_after` (the worker's own next process
gets in once the old one expires, deregisters or fails), so nobody takes over a live
worker's traffic. Everything a worker sends that the router keeps is bounded: refusals are a
short ring, reasons are a fixed set (they label a metric), roles must be known ones.

Several router replicas may serve the same workers (active-active): each has its own registry
and its own `router_id`, sent back at registration. A worker's heartbeat tells this router how
many of its requests are this router's (`fleet.load_merge`) and whether the worker is
draining — the worker holds that state, so a drain asked through any replica reaches every
replica's registry with the next heartbeat (`drain_epoch` orders it against this router's own
change). Listeners hear when a heartbeat starts a drain (`on_drain`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.fleet.load_merge import others_in_flight
from mainsail.spec.kvhash import KVHashConfig
from mainsail.spec.router_identity import new_router_id

Listener = Callable[["WorkerEntry"], None]
ROLES = frozenset({"unified", "prefill", "decode", "encode"})
REFUSAL_REASONS = (
    "bad registration",
    "model mismatch",
    "KV hash mismatch",
    "worker id in use",
)
"""Every reason a registration is refused (the `reason` label of the refusals metric)."""
MAX_REFUSALS_KEPT = 64


@dataclass
class WorkerEntry:
    """One registered worker: its static description and its latest dynamic state."""

    info: pb.WorkerInfo
    last_seen: float
    load: pb.LoadSnapshot = field(default_factory=pb.LoadSnapshot)
    outstanding: int = 0
    pending_prefill: int = 0  # uncached prompt tokens dispatched here, first token not yet seen
    failures: int = 0
    draining: bool = False  # an operator asked to empty it: no new requests are sent here
    drain_epoch: int = 0  # the worker's count of drain changes this state reflects
    others: int = 0  # requests other routers have there, per its last heartbeat

    @property
    def fingerprint(self) -> str:
        """The KV hashing fingerprint the worker registered with."""
        kv = self.info.kv_hash
        return KVHashConfig(
            block_size=kv.block_size or 1,
            hash_seed=kv.hash_seed,
            algorithm=kv.algorithm or "unspecified",
        ).fingerprint()

    @property
    def worker_id(self) -> str:
        return str(self.info.worker_id)

    @property
    def address(self) -> str:
        return str(self.info.address)


@dataclass(frozen=True)
class Verdict:
    """Outcome of a registration: accepted, or refused with a reason."""

    accepted: bool
    detail: str = ""
    reason: str = ""  # one of REFUSAL_REASONS when refused
    retry_after: float = 0.0  # > 0: the refusal is temporary


def _malformed(info: pb.WorkerInfo) -> str:
    """What is wrong with a registration's own fields ('' when nothing)."""
    if not info.worker_id or not info.address:
        return "worker_id and address are required"
    if len(info.worker_id) > 128 or len(info.address) > 256 or len(info.metrics_address) > 256:
        return "worker_id (128), address or metrics_address (256 characters) too long"
    if (info.role or "unified") not in ROLES:
        return f"role must be one of {', '.join(sorted(ROLES))}"
    if len(info.adapters) > 256 or any(len(a) > 128 for a in info.adapters):
        return "at most 256 adapters of at most 128 characters"
    return ""


class WorkerRegistry:
    """Registered workers keyed by id; listeners hear about additions and removals."""

    def __init__(
        self,
        model: str,
        kv_hash: KVHashConfig,
        *,
        expiry: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        router_id: str | None = None,
    ) -> None:
        if expiry <= 0:
            raise ValueError(f"expiry must be > 0 seconds, got {expiry}")
        self._model = model
        self._kv_hash = kv_hash
        self._expiry = expiry
        self._clock = clock
        self.router_id = router_id or new_router_id()
        self._workers: dict[str, WorkerEntry] = {}
        self._on_add: list[Listener] = []
        self._on_remove: list[Listener] = []
        self._on_drain: list[Listener] = []
        self.refusals: deque[tuple[str, str]] = deque(maxlen=MAX_REFUSALS_KEPT)

    def subscribe(
        self,
        on_add: Listener | None = None,
        on_remove: Listener | None = None,
        on_drain: Listener | None = None,
    ) -> None:
        """Call ``on_add``/``on_remove`` whenever a worker joins or leaves, ``on_drain`` when a
        heartbeat says a worker started draining (asked through another router)."""
        if on_add:
            self._on_add.append(on_add)
        if on_remove:
            self._on_remove.append(on_remove)
        if on_drain:
            self._on_drain.append(on_drain)

    def register(self, info: pb.WorkerInfo) -> Verdict:
        """Admit ``info`` unless its model or KV hashing parameters disagree with ours."""
        verdict = self._check(info)
        if not verdict.accepted:
            self.refusals.append((info.worker_id[:128], verdict.detail))
            return verdict
        old = self._workers.get(info.worker_id)
        now = self._clock()
        if old is not None and old.address != info.address:
            held = old.last_seen + self._expiry - now
            if held > 0:
                verdict = Verdict(
                    False,
                    f"worker id in use: {info.worker_id!r} is registered from another address "
                    "and still heartbeating",
                    reason="worker id in use",
                    retry_after=max(0.5, min(held, self._expiry)),
                )
                self.refusals.append((info.worker_id[:128], verdict.detail))
                return verdict
        entry = WorkerEntry(info=info, last_seen=now)
        if old is not None:
            entry.outstanding = old.outstanding
            if old.address != info.address:
                self._remove(old)
        self._workers[info.worker_id] = entry
        for listener in self._on_add:
            listener(entry)
        return verdict

    def _check(self, info: pb.WorkerInfo) -> Verdict:
        bad = _malformed(info)
        if bad:
            return Verdict(False, f"bad registration: {bad}", reason="bad registration")
        if info.model != self._model:
            return Verdict(
                False,
                f"model mismatch: worker serves {info.model[:128]!r}, router serves "
                f"{self._model!r}",
                reason="model mismatch",
            )
        theirs = WorkerEntry(info=info, last_seen=0.0).fingerprint
        ours = self._kv_hash.fingerprint()
        if theirs != ours:
            return Verdict(
                False,
                f"KV hash mismatch: worker {theirs[:200]}, router {ours}",
                reason="KV hash mismatch",
            )
        return Verdict(True)

    def heartbeat(self, worker_id: str, load: pb.LoadSnapshot) -> bool:
        """Record a worker's load; False when it is unknown and must register again."""
        entry = self._workers.get(worker_id)
        if entry is None:
            return False
        entry.last_seen = self._clock()
        entry.load = load
        entry.others = others_in_flight(load, self.router_id)
        if load.drain_epoch > entry.drain_epoch or (
            load.drain_epoch == entry.drain_epoch and load.draining == entry.draining
        ):
            started = load.draining and not entry.draining
            entry.draining = load.draining
            entry.drain_epoch = load.drain_epoch
            if started:
                for listener in self._on_drain:
                    listener(entry)
        return True

    def set_draining(self, worker_id: str, draining: bool, epoch: int) -> None:
        """This router changed the worker's draining state (the worker answered ``epoch``);
        heartbeats older than that change no longer override it."""
        entry = self._workers.get(worker_id)
        if entry is not None and epoch >= entry.drain_epoch:
            entry.draining = draining
            entry.drain_epoch = epoch

    def deregister(self, worker_id: str) -> None:
        """Forget a worker that is shutting down."""
        entry = self._workers.get(worker_id)
        if entry is not None:
            self._remove(entry)

    def prune(self) -> list[str]:
        """Drop workers silent for longer than the expiry; returns their ids."""
        deadline = self._clock() - self._expiry
        dead = [e for e in self._workers.values() if e.last_seen < deadline]
        for entry in dead:
            self._remove(entry)
        return [e.worker_id for e in dead]

    def mark_failed(self, worker_id: str) -> None:
        """The transport to the worker failed: stop routing to it until it registers again."""
        entry = self._workers.get(worker_id)
        if entry is not None:
            self._remove(entry)

    def _remove(self, entry: WorkerEntry) -> None:
        if self._workers.get(entry.worker_id) is entry:
            del self._workers[entry.worker_id]
        for listener in self._on_remove:
            listener(entry)

    def get(self, worker_id: str) -> WorkerEntry | None:
        return self._workers.get(worker_id)

    def entries(self) -> list[WorkerEntry]:
        """Every registered worker, in registration order."""
        return list(self._workers.values())

    def __len__(self) -> int:
        return len(self._workers)
