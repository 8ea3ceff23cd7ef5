"""Migration as a policy: which streaming requests to move, where, and why (one pure planner).

Why: KV-aware routing decides once, at arrival, from loads that are a heartbeat old; bursts
and long generations still leave one worker queueing while another has room, a stream
missing its time-per-output-token target on a crowded worker, or a worker that is about to
be removed. Llumnix showed that moving running requests between instances fixes these after
the fact, and that moving the KV (not recomputing it) makes a move cheap. Every automatic
move and every drain is planned here, from a snapshot (`WorkerLoad`), and made by
`RequestMover.migrate` (with the KV; by recompute when that fails).

    load(w)  = (running + waiting) / max_num_seqs                 from heartbeats
    room(w)  = running + waiting < max_num_seqs

Rules, in this order, each move updating the loads as if it happened (source: one running
fewer, one of its waiting starts; target: one more running) before the next is planned:

1. **drain** (before scale-in, `POST /workers/<id>/drain`): every stream on a draining worker
   goes to the lightest non-draining worker with room (the lightest of all if none has room:
   the worker is going away). Not capped: a drain empties the worker.
2. **slo** (SLO rescue): a stream whose observed time per output token has reached
   ``tpot_risk`` of its target (``tpot_ratio`` >= tpot_risk), on a worker that is busier by at
   least ``load_gap`` than the lightest non-draining worker with room, moves there — the
   most endangered stream first.
3. **balance**: while the busiest worker has ``min_waiting`` requests queued inside it and
   the lightest with room is lighter by ``load_gap``, the busiest's stream with the fewest
   context tokens moves (the least KV to copy, or to recompute in the fallback).
4. **defrag** (KV de-fragmentation): a worker with requests queued whose KV cache is at least
   ``kv_high_watermark`` full gives its longest-context stream (the most blocks freed in one
   move, so a queued prompt fits) to the worker with the emptiest cache if that one has room
   and is emptier by ``load_gap``.

Rules 2-4 make at most ``max_moves_per_round`` moves together; no request moves twice in a
round; a draining worker is never a target, and a source never its own target.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from mainsail.spec.rebalance import Rebalance

Reason = Literal["drain", "slo", "balance", "defrag"]


@dataclass
class WorkerLoad:
    """One worker as the policy sees it. ``streams``: (request id, context tokens) of the
    requests this router streams from it; ``tpot_ratio``: request id -> observed time per
    output token / its target (only streams with a target); ``kv_usage``: used / total
    KV blocks."""

    worker_id: str
    running: int
    waiting: int
    max_num_seqs: int
    draining: bool = False
    streams: list[tuple[str, int]] = field(default_factory=list)
    tpot_ratio: dict[str, float] = field(default_factory=dict)
    kv_usage: float = 0.0

    @property
    def load(self) -> float:
        return (self.running + self.waiting) / max(1, self.max_num_seqs)

    @property
    def has_room(self) -> bool:
        return self.running + self.waiting < self.max_num_seqs


@dataclass(frozen=True)
class Move:
    """Move ``request_id`` from ``source`` to ``target`` (``reason``: the rule)."""

    request_id: str
    source: str
    target: str
    reason: Reason = "balance"


def plan_moves(workers: Sequence[WorkerLoad], settings: Rebalance) -> list[Move]:
    """The moves of one round (see the module docstring); ``workers`` are not modified."""
    plan = _Plan(workers, settings)
    plan.drain()
    plan.rescue()
    plan.balance()
    plan.defrag()
    return plan.moves


class _Plan:
    def __init__(self, workers: Sequence[WorkerLoad], settings: Rebalance) -> None:
        self.settings = settings
        self.pool = [
            WorkerLoad(
                w.worker_id,
                w.running,
                w.waiting,
                w.max_num_seqs,
                w.draining,
                sorted(w.streams, key=lambda s: (s[1], s[0])),
                dict(w.tpot_ratio),
                w.kv_usage,
            )
            for w in sorted(workers, key=lambda w: w.worker_id)
        ]
        self.moves: list[Move] = []
        self.budget = settings.max_moves_per_round
        self.moved: set[str] = set()

    def _targets(self, room: bool = True) -> list[WorkerLoad]:
        return [w for w in self.pool if not w.draining and (w.has_room or not room)]

    def _lightest(self, candidates: Iterable[WorkerLoad]) -> WorkerLoad | None:
        return min(candidates, key=lambda w: (w.load, w.worker_id), default=None)

    def _move(self, source: WorkerLoad, request_id: str, target: WorkerLoad, why: Reason) -> None:
        source.streams = [s for s in source.streams if s[0] != request_id]
        self.moved.add(request_id)
        self.moves.append(Move(request_id, source.worker_id, target.worker_id, why))
        if source.waiting > 0:
            source.waiting -= 1  # the freed slot takes one of its queued requests
        else:
            source.running = max(0, source.running - 1)
        target.running += 1
        if why != "drain":
            self.budget -= 1

    def drain(self) -> None:
        for source in [w for w in self.pool if w.draining]:
            for request_id, _context in list(source.streams):
                target = self._lightest(self._targets()) or self._lightest(self._targets(False))
                if target is None:
                    return  # nowhere to go: every worker is draining
                self._move(source, request_id, target, "drain")

    def rescue(self) -> None:
        risk = self.settings.tpot_risk
        endangered = sorted(
            (
                (-ratio, source.worker_id, request_id)
                for source in self.pool
                if not source.draining
                for request_id, ratio in source.tpot_ratio.items()
                if ratio >= risk and any(s[0] == request_id for s in source.streams)
            ),
        )
        by_id = {w.worker_id: w for w in self.pool}
        for _ratio, source_id, request_id in endangered:
            if self.budget <= 0:
                return
            source = by_id[source_id]
            target = self._lightest(w for w in self._targets() if w is not source)
            if target is None or target.load > source.load - self.settings.load_gap:
                continue
            self._move(source, request_id, target, "slo")

    def balance(self) -> None:
        settings = self.settings
        while self.budget > 0:
            sources = [
                w
                for w in self.pool
                if w.waiting >= settings.min_waiting and self._movable(w) is not None
            ]
            source = max(sources, key=lambda w: (w.load, w.worker_id), default=None)
            target = self._lightest(self._targets())
            if source is None or target is None or target is source:
                return
            if target.load > source.load - settings.load_gap:
                return
            request_id = self._movable(source)
            assert request_id is not None
            self._move(source, request_id, target, "balance")

    def defrag(self) -> None:
        settings = self.settings
        for source in sorted(self.pool, key=lambda w: (-w.kv_usage, w.worker_id)):
            if self.budget <= 0:
                return
            if source.waiting < 1 or source.kv_usage < settings.kv_high_watermark:
                continue
            longest = [s for s in reversed(source.streams) if s[0] not in self.moved]
            if not longest:
                continue
            candidates = [w for w in self._targets() if w is not source]
            target = min(candidates, key=lambda w: (w.kv_usage, w.worker_id), default=None)
            if target is None or target.kv_usage > source.kv_usage - settings.load_gap:
                continue
            self._move(source, longest[0][0], target, "defrag")

    def _movable(self, worker: WorkerLoad) -> str | None:
        """The worker's shortest-context stream not moved yet this round."""
        for request_id, _context in worker.streams:
            if request_id not in self.moved:
                return request_id
        return None
