"""`spec.router.profile`: the scheduling profile (filters, weighted scorers, picker) by plugin name.

Shared by the router's scheduler and the simulator, which must score workers the same way.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mainsail.spec.spec_model import SpecModel


class ScorerWeight(SpecModel):
    """One scorer of the routing profile and its weight."""

    name: str = Field(..., min_length=1)
    weight: float = Field(1.0, ge=0, le=1000)


class RoutingProfile(SpecModel):
    """Filters, weighted scorers and a picker, by plugin name (see router/scheduling)."""

    filters: list[str] = Field(default_factory=lambda: ["healthy", "role", "capacity"])
    scorers: list[ScorerWeight] = Field(
        default_factory=lambda: [
            ScorerWeight(name="prefill-time", weight=2.0),
            ScorerWeight(name="queue-depth", weight=1.0),
            ScorerWeight(name="running-requests", weight=1.0),
            ScorerWeight(name="kv-utilization", weight=0.5),
        ]
    )
    picker: Literal["max-score", "weighted-random", "round-robin"] = Field(
        "max-score", description="How one worker is chosen from the scored candidates."
    )
