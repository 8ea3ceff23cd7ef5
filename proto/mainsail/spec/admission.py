"""`spec.router.flow` and `spec.router.admission`: how the router queues requests waiting for a
worker and when it refuses one early.

Both decide whether a request is admitted; the step cost model they predict with lives in
`mainsail.spec.step_cost`.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from mainsail.spec.spec_model import SpecModel
from mainsail.spec.step_cost import StepCost


class FlowControl(SpecModel):
    """The router's queue of requests waiting for a worker (issue 14): one queue per priority
    band, inside a band one per tenant (its API key, an operator-mapped tenant header, or, on
    an open router, the `x-mainsail-fairness-id` header), served fairly across tenants and
    earliest deadline first within one. `maxQueue` bounds them all together."""

    max_per_band: int = Field(
        4096, ge=1, description="Requests one priority band may hold waiting before 429."
    )
    max_per_tenant: int = Field(
        1024,
        ge=1,
        description="Requests one tenant may hold waiting in one band before 429 (so a flood "
        "from one tenant fills its own queue, not everyone's).",
    )

    @model_validator(mode="after")
    def _nested(self) -> FlowControl:
        if self.max_per_tenant > self.max_per_band:
            raise ValueError("router.flow: maxPerTenant must be <= maxPerBand")
        return self


class Admission(SpecModel):
    """Early refusal of requests no worker can serve within their TTFT target: the router
    predicts each candidate worker's time to first token with the engine's step cost model
    (its queue of prefill, the request's uncached prompt, the running decodes) and answers
    429 with the reason and `Retry-After` instead of letting the request wait past it."""

    step_cost: StepCost | None = Field(
        None,
        description="The workers' step cost model (`mainsail.spec.step_cost`; fit it from "
        "measured steps with `python -m mainsail.sim.calibrate`, or take a profile of the "
        "simulator's gpu_profiles.yaml). Unset: no prediction, only the bounded queues refuse.",
    )
    headroom: float = Field(
        1.0,
        gt=0,
        le=100,
        description="A request is refused when its predicted TTFT exceeds headroom x its "
        "target (above 1 tolerates a pessimistic model, below 1 corrects an optimistic one).",
    )
