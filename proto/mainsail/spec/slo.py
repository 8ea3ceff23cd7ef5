"""`spec.slo`: latency targets, the named service classes clients select, and the bounds on what a
request may ask for itself.

Read by the router (flow control, admission, metrics) and the engine (deadline order).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from mainsail.spec.spec_model import SpecModel


class SLOClass(SpecModel):
    """A named service class clients select per request."""

    name: str = Field(..., min_length=1, max_length=63, pattern=r"^[a-z0-9-]+$")
    priority: int = Field(
        0,
        ge=-100,
        le=100,
        description="Priority band: higher is served first and shed last. Negative classes "
        "are sheddable: they run only on spare capacity and are dropped first under pressure.",
    )
    ttft_ms: float | None = Field(None, gt=0, description="Time-to-first-token target.")
    tpot_ms: float | None = Field(None, gt=0, description="Time-per-output-token target.")


class RequestTargetBounds(SpecModel):
    """What a request may ask for itself (`ttft_ms` / `tpot_ms` fields or headers): a client
    asking tighter than `min*` would jump the engine's deadline order, looser than `max*`
    would hold capacity. Out of bounds is a 400 naming the field."""

    min_ttft_ms: float = Field(50, gt=0, description="Tightest TTFT target a request may ask.")
    max_ttft_ms: float = Field(600_000, gt=0, description="Loosest TTFT target a request may ask.")
    min_tpot_ms: float = Field(5, gt=0, description="Tightest TPOT target a request may ask.")
    max_tpot_ms: float = Field(60_000, gt=0, description="Loosest TPOT target a request may ask.")
    max_priority: int = Field(
        0,
        ge=0,
        le=100,
        description="Highest band a request's own `priority` field may raise it to (higher "
        "values are lowered to this). 0: only SLO classes set bands, so no client can jump "
        "the queue by asking.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> RequestTargetBounds:
        if self.min_ttft_ms > self.max_ttft_ms:
            raise ValueError("slo.requestBounds: minTtftMs must be <= maxTtftMs")
        if self.min_tpot_ms > self.max_tpot_ms:
            raise ValueError("slo.requestBounds: minTpotMs must be <= maxTpotMs")
        return self


class SLO(SpecModel):
    """Latency targets; `ttftMs`/`tpotMs` apply when a request names no class (and the class
    sets none), `requestBounds` limits what a request may ask for itself."""

    ttft_ms: float = Field(2000, gt=0)
    tpot_ms: float = Field(200, gt=0)
    classes: list[SLOClass] = Field(default_factory=list)
    request_bounds: RequestTargetBounds = RequestTargetBounds()
