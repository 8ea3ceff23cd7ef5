"""`FlowQueue`: the discipline of the router's waiting room — priority bands, fair queuing
across tenants, deadlines within a tenant, and a bound on every queue.

Requests wait here only while no worker can take them (every candidate is at capacity), so
this decides who goes first when capacity frees up, and who is refused when it does not:

- **Bands.** The highest priority with a request waiting is always served first.
- **Fairness inside a band** (start-time fair queuing, one unit per request). Each flow (a
  tenant: its API key, an operator-mapped tenant header, or a client's fairness id on an
  open router) carries a virtual start tag; the flow with the smallest tag is served next
  (ties: the older head) and its tag then grows by one. A flow that starts waiting begins at
  the band's virtual time (the tag last served), so idling earns no credit and a newcomer is
  served within one round: a tenant sending ten times as much gets the same share of the
  freed slots as one sending a trickle, not ten times its place in line.
- **Deadlines inside a flow.** Earliest deadline first, ties by arrival.
- **Bounds.** At most `max_total` waiting, `max_per_band` per band and `max_per_flow` per flow
  in one band. An arrival that finds the total or its band full displaces the newest request
  of the lowest band strictly below its own (from that band's largest flow): lower bands are
  shed first. A flow's own bound never displaces anyone: a flood fills its own queue only.
- **Sheddable** (negative priority) requests wait only on spare capacity: they are refused
  while anything of priority >= 0 waits, and shed when such a request arrives.

A pure policy object (no clock, no I/O; the caller passes deadlines as numbers), so the
invariants are tested with Hypothesis (`tests/unit/test_flow_queue.py`).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """Bounds of the waiting room, in requests."""

    max_total: int
    max_per_band: int
    max_per_flow: int

    def __post_init__(self) -> None:
        if min(self.max_total, self.max_per_band, self.max_per_flow) < 1:
            raise ValueError("flow limits must be >= 1")
        if self.max_per_flow > self.max_per_band:
            raise ValueError("max_per_flow must be <= max_per_band")


@dataclass(frozen=True, slots=True)
class Ticket:
    """One waiting request: its band, flow, deadline (any clock) and arrival number."""

    seq: int
    priority: int
    flow: str
    deadline: float


@dataclass(frozen=True, slots=True)
class Offer:
    """What an arrival got: its ticket (None: refused, ``reason`` says why) and the waiting
    tickets it displaced (each must be refused by the caller)."""

    ticket: Ticket | None
    reason: str = ""
    shed: tuple[Ticket, ...] = ()


@dataclass
class _Band:
    flows: dict[str, list[tuple[float, int, Ticket]]] = field(default_factory=dict)
    tags: dict[str, float] = field(default_factory=dict)
    vtime: float = 0.0
    count: int = 0


class FlowQueue:
    """Waiting requests in service order (see the module docstring)."""

    def __init__(self, limits: FlowLimits) -> None:
        self.limits = limits
        self._bands: dict[int, _Band] = {}
        self._seq = 0
        self._count = 0
        self._tickets: set[Ticket] = set()

    def __len__(self) -> int:
        return self._count

    def __contains__(self, ticket: object) -> bool:
        return ticket in self._tickets

    def band_count(self, priority: int) -> int:
        """Requests waiting in band ``priority``."""
        band = self._bands.get(priority)
        return band.count if band else 0

    def flow_count(self, priority: int, flow: str) -> int:
        """Requests of ``flow`` waiting in band ``priority``."""
        band = self._bands.get(priority)
        return len(band.flows.get(flow, ())) if band else 0

    def waiting_at_or_above(self, priority: int) -> int:
        """Requests waiting in bands ``priority`` and higher (served before a new arrival
        of that band, or tied with it)."""
        return sum(b.count for p, b in self._bands.items() if p >= priority)

    # ------------------------------------------------------------------ arrivals

    def offer(self, priority: int, flow: str, deadline: float) -> Offer:
        """Queue a request, displacing lower bands if a shared bound is full."""
        limits = self.limits
        if priority < 0 and self._count - self._sheddable_count() > 0:
            return Offer(None, "sheddable requests wait only on spare capacity")
        if self.flow_count(priority, flow) >= limits.max_per_flow:
            return Offer(None, f"this tenant already has {limits.max_per_flow} requests waiting")
        shed: list[Ticket] = []
        if priority >= 0:
            shed += self._drop_sheddable()
        while self._count >= limits.max_total or self.band_count(priority) >= limits.max_per_band:
            band_full = self.band_count(priority) >= limits.max_per_band
            victim = None if band_full else self._victim_below(priority)
            if victim is None:
                reason = (
                    f"{limits.max_per_band} requests of this priority are waiting"
                    if band_full
                    else f"{limits.max_total} requests are waiting"
                )
                return Offer(None, reason, tuple(shed))
            self.remove(victim)
            shed.append(victim)
        self._seq += 1
        ticket = Ticket(self._seq, priority, flow, deadline)
        band = self._bands.setdefault(priority, _Band())
        queue = band.flows.get(flow)
        if queue is None:
            queue = band.flows[flow] = []
            band.tags[flow] = max(band.tags.get(flow, band.vtime), band.vtime)
        heapq.heappush(queue, (deadline, ticket.seq, ticket))
        band.count += 1
        self._count += 1
        self._tickets.add(ticket)
        return Offer(ticket, "", tuple(shed))

    def _sheddable_count(self) -> int:
        return sum(b.count for p, b in self._bands.items() if p < 0)

    def _drop_sheddable(self) -> list[Ticket]:
        dropped = [
            t for p, b in self._bands.items() if p < 0 for q in b.flows.values() for *_, t in q
        ]
        for ticket in dropped:
            self.remove(ticket)
        return dropped

    def _victim_below(self, priority: int) -> Ticket | None:
        """The newest request of the lowest band below ``priority``, from its largest flow."""
        lower = [p for p, b in self._bands.items() if p < priority and b.count]
        if not lower:
            return None
        band = self._bands[min(lower)]
        flow = max(band.flows, key=lambda f: (len(band.flows[f]), f))
        return max(band.flows[flow], key=lambda item: (item[0], item[1]))[2]

    # ------------------------------------------------------------------ service

    def head(self) -> Ticket | None:
        """The request to serve next, or None when nothing waits."""
        if not self._count:
            return None
        band = self._bands[max(p for p, b in self._bands.items() if b.count)]
        flow = self._next_flow(band)
        return band.flows[flow][0][2]

    def in_order(self) -> list[Ticket]:
        """Every waiting request in the order `pop_head` would serve them if nothing else
        arrived (the queue is not changed): bands highest first, flows by start tag."""
        out: list[Ticket] = []
        for priority in sorted(self._bands, reverse=True):
            band = self._bands[priority]
            queues = {flow: sorted(q) for flow, q in band.flows.items()}
            heap = [(band.tags[f], q[0][1], f, 0) for f, q in queues.items()]
            heapq.heapify(heap)
            while heap:
                tag, _, flow, i = heapq.heappop(heap)
                queue = queues[flow]
                out.append(queue[i][2])
                if i + 1 < len(queue):
                    heapq.heappush(heap, (tag + 1.0, queue[i + 1][1], flow, i + 1))
        return out

    def _next_flow(self, band: _Band) -> str:
        return min(band.flows, key=lambda f: (band.tags[f], band.flows[f][0][1]))

    def pop_head(self) -> Ticket:
        """Serve the head: it leaves the queue and its flow's tag advances by one."""
        ticket = self.head()
        if ticket is None:
            raise IndexError("pop_head from an empty FlowQueue")
        band = self._bands[ticket.priority]
        band.vtime = max(band.vtime, band.tags[ticket.flow])
        band.tags[ticket.flow] += 1.0
        heapq.heappop(band.flows[ticket.flow])
        self._take(band, ticket)
        return ticket

    def remove(self, ticket: Ticket) -> None:
        """Take ``ticket`` out without serving it (timed out, cancelled, shed); no-op if gone."""
        if ticket not in self._tickets:
            return
        band = self._bands[ticket.priority]
        queue = band.flows[ticket.flow]
        queue.remove((ticket.deadline, ticket.seq, ticket))
        heapq.heapify(queue)
        self._take(band, ticket)

    def _take(self, band: _Band, ticket: Ticket) -> None:
        self._tickets.discard(ticket)
        band.count -= 1
        self._count -= 1
        if not band.flows[ticket.flow]:
            del band.flows[ticket.flow]
            if band.tags[ticket.flow] <= band.vtime:
                del band.tags[ticket.flow]  # it would restart at vtime anyway
            elif len(band.tags) > 2 * len(band.flows) + 64:
                # Idle flows served in this round keep their tag until the round moves on;
                # past that they would restart at vtime too (bounded under many tenants).
                for idle in [f for f, t in band.tags.items() if f not in band.flows]:
                    if band.tags[idle] <= band.vtime + 1 and idle != ticket.flow:
                        del band.tags[idle]
        if not band.count and not band.flows:
            del self._bands[ticket.priority]
