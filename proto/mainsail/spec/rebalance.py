"""`spec.router.rebalance`: the knobs of the router's live-migration planner.

A section of its own so the planner (`router/routing/rebalance.py`) and its tests import only
what they tune.
"""

from __future__ import annotations

from pydantic import Field

from mainsail.spec.spec_model import SpecModel


class Rebalance(SpecModel):
    """Automatic live migration (the router's planner, `router/routing/rebalance.py`).

    Every `intervalSeconds` the router compares workers' load ((running + waiting) / max
    sequences, from heartbeats) and moves streaming requests (with their KV): a stream whose
    time per output token reached `tpotRisk` of its target, off a worker busier by `loadGap`
    than the lightest (SLO rescue); while the busiest has at least `minWaiting` requests
    queued inside it and another is lighter by at least `loadGap` with a free slot, its
    shortest-context stream (load balance); the longest stream of a worker with requests
    queued and its KV cache at least `kvHighWatermark` full, to the emptiest cache (KV
    de-fragmentation). At most `maxMovesPerRound` per round. Drains are planned the same way
    whether or not this is enabled. Off by default.
    """

    enabled: bool = False
    interval_seconds: float = Field(2.0, gt=0, le=3600)
    min_waiting: int = Field(2, ge=1, le=10_000)
    load_gap: float = Field(0.25, gt=0, le=1)
    max_moves_per_round: int = Field(4, ge=1, le=1000)
    tpot_risk: float = Field(
        0.9,
        gt=0,
        le=10,
        description="A stream is at risk when its observed time per output token reaches "
        "this fraction of its TPOT target.",
    )
    kv_high_watermark: float = Field(
        0.9,
        gt=0,
        le=1,
        description="KV cache usage from which a worker with requests queued gives a stream "
        "away (de-fragmentation).",
    )
