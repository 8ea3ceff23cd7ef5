"""Automatic live migration: which streaming requests to move, and where (pure policy).

Why: KV-aware routing decides once, at arrival, from loads that are a heartbeat old; bursts
and long generations still leave one worker queueing while another has room. Llumnix showed
that moving running requests between instances fixes such imbalance after the fact. Here a
move is the router's own (`Router.migrate`): the request continues on the target from its
prompt plus the tokens already streamed, so its cost is one prefill of that context there —
hence the shortest-context request is the one moved.

    load(w)  = (running + waiting) / max_num_seqs                 from heartbeats
    source   = the busiest worker with waiting >= min_waiting      (a queue is building)
    target   = the lightest worker with load <= load(source) - load_gap and a free slot
    move     = source's streaming request with the fewest context tokens

then the two loads are updated as if the move happened (source: one running fewer, one of its
waiting starts; target: one more running) and the next move is planned, up to
``max_moves_per_round``. Draining workers are never targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mainsail.spec.deployment import Rebalance


@dataclass
class WorkerLoad:
    """One worker as the policy sees it; ``streams`` are (request id, context tokens)."""

    worker_id: str
    running: int
    waiting: int
    max_num_seqs: int
    draining: bool = False
    streams: list[tuple[str, int]] = field(default_factory=list)

    @property
    def load(self) -> float:
        return (self.running + self.waiting) / max(1, self.max_num_seqs)

    @property
    def has_room(self) -> bool:
        return self.running + self.waiting < self.max_num_seqs


@dataclass(frozen=True)
class Move:
    """Move ``request_id`` from ``source`` to ``target``."""

    request_id: str
    source: str
    target: str


def plan_moves(workers: Sequence[WorkerLoad], settings: Rebalance) -> list[Move]:
    """The moves of one round (see the module docstring); ``workers`` are not modified."""
    pool = [
        WorkerLoad(w.worker_id, w.running, w.waiting, w.max_num_seqs, w.draining,
                   sorted(w.streams, key=lambda s: (s[1], s[0])))
        for w in workers
    ]  # fmt: skip
    moves: list[Move] = []
    while len(moves) < settings.max_moves_per_round:
        sources = [w for w in pool if w.waiting >= settings.min_waiting and w.streams]
        targets = [w for w in pool if not w.draining and w.has_room]
        if not sources or not targets:
            break
        source = max(sources, key=lambda w: (w.load, w.worker_id))
        target = min(targets, key=lambda w: (w.load, w.worker_id))
        if target is source or target.load > source.load - settings.load_gap:
            break
        request_id, _context = source.streams.pop(0)
        moves.append(Move(request_id, source.worker_id, target.worker_id))
        source.waiting -= 1  # the freed slot takes one of its queued requests
        target.running += 1
    return moves
