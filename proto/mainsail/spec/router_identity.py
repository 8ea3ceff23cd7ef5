"""How a worker tells router replicas apart: the router id on each SubmitMany stream.

Several router replicas dispatch to the same worker (active-active). Each router process picks
a random id at start, returns it in `RegisterReply.router_id` and sends it as this gRPC metadata
key on its `Worker.SubmitMany` streams; the worker then counts its in-flight requests per
router and reports each router its own share (`LoadSnapshot.router_in_flight`). Written down
here because both sides must agree on the key.
"""

from __future__ import annotations

import secrets

ROUTER_ID_METADATA = "x-mainsail-router"
"""gRPC metadata key carrying the router's id on SubmitMany."""
MAX_ROUTER_ID_CHARS = 64
"""Longer ids are cut (the worker keeps them per stream)."""


def new_router_id() -> str:
    """A fresh router id (unique per router process)."""
    return secrets.token_hex(8)
