"""`role`: keep workers that serve the phase the request needs.

Formula: keep ``w`` iff ``w.role == request.role``, or ``w.role == "unified"`` and the request
wants ``"prefill"`` or ``"decode"`` (a unified worker runs both phases in one engine). A request
that wants ``"unified"`` (whole request in one worker) goes to unified workers only, and
``"encode"`` to encode workers only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from mainsail.router.scheduling.types import SchedulingContext, WorkerSnapshot

_SERVED_BY = {
    "unified": frozenset({"unified"}),
    "prefill": frozenset({"prefill", "unified"}),
    "decode": frozenset({"decode", "unified"}),
    "encode": frozenset({"encode"}),
}


class RoleFilter:
    """Keeps workers whose role can run the requested phase."""

    name: ClassVar[str] = "role"
    reads: ClassVar[frozenset[str]] = frozenset({"role", "request"})

    def filter(
        self, ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]
    ) -> list[WorkerSnapshot]:
        roles = _SERVED_BY[ctx.request.role]
        return [w for w in candidates if w.role in roles]
