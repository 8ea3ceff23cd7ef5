"""A worker's total in-flight load as one router replica sees it, without double counting.

With several router replicas (active-active) each router knows its own requests exactly and
live (`WorkerEntry.outstanding`, changed at every dispatch and finish) but not the other
replicas'. The worker knows them all, but only as of its last heartbeat. The worker's
heartbeat to this router says how many of its running + waiting requests came from this router
(`LoadSnapshot.router_in_flight`, counted per SubmitMany stream tagged with the router's id), so

    others = max(0, running + waiting - router_in_flight)     (as of the report)
    merged = outstanding + others                             (this router's part live)

Never below either source (this router's live count, the other routers' reported share), and
equal to `outstanding` when every request at the worker is this router's, so one router alone
schedules exactly as before. A report not attributed to this router (an older worker, a fake,
or addressed to a previous process of this router) adds nothing: the scheduling filters and
scorers already compare `outstanding` with the reported running + waiting themselves.
"""

from __future__ import annotations

from mainsail.proto.v1 import mainsail_pb2 as pb


def others_in_flight(load: pb.LoadSnapshot, router_id: str) -> int:
    """Requests at the worker from other routers, per its report (0 if not attributed)."""
    if not router_id or load.router_id != router_id:
        return 0
    return max(0, load.running + load.waiting - load.router_in_flight)


def merged_in_flight(own: int, others: int) -> int:
    """The worker's total in-flight requests: this router's live count plus the others'."""
    if own < 0 or others < 0:
        raise ValueError(f"in-flight counts must be >= 0, got own={own} others={others}")
    return own + others
