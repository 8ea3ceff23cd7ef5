"""Summary metrics of one run: latency percentiles, SLO attainment, goodput, hits, balance.

Definitions (all times in seconds, from the request's arrival at the router):

- TTFT: arrival to first token; TPOT: mean gap between later tokens; E2E: arrival to last token.
- SLO: a request meets it when TTFT <= ``ttft_s + ttft_per_1k_tokens_s * prompt / 1000`` and
  TPOT <= ``tpot_s``. The per-1k allowance exists because Mooncake prompts reach 126k tokens:
  prefilling 85k tokens alone takes ~7 s on an idle H100, which no router can fix.
- Goodput: requests meeting the SLO per second of trace (first to last arrival).
- Prefix hit rate: prompt tokens served from a worker's prefix cache / all prompt tokens
  (including blocks fetched from the shared tier; ``tier_hit_rate`` is that part alone).
- Load spread: the max and coefficient of variation of requests served per worker, relative to
  the mean (1.0 = perfectly even), and the busiest worker's utilisation.
- Queueing: arrival to admission into a worker's batch (router hold + worker queue).

Requests still unfinished when the run stops count as SLO misses and are reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mainsail.sim.simulation import RunResult


@dataclass(frozen=True)
class SLOTargets:
    """Latency targets for SLO attainment, seconds."""

    ttft_s: float = 2.0
    ttft_per_1k_tokens_s: float = 0.1
    tpot_s: float = 0.1

    def __post_init__(self) -> None:
        if self.ttft_s <= 0 or self.tpot_s <= 0 or self.ttft_per_1k_tokens_s < 0:
            raise ValueError("SLO targets must be positive")


@dataclass(frozen=True)
class Summary:
    """One policy's figures, as the report prints them."""

    policy: str
    requests: int
    unfinished: int
    ttft: tuple[float, float, float]  # p50, p90, p99
    tpot: tuple[float, float, float]
    e2e: tuple[float, float, float]
    queue: tuple[float, float, float]
    ttft_attainment: float  # fraction of all requests
    tpot_attainment: float
    slo_attainment: float
    goodput_rps: float
    hit_rate: float
    served_max_over_mean: float
    served_cv: float
    max_utilisation: float
    wall_s: float
    decide_us: float  # mean host time per routing decision (ours only), microseconds
    tier_hit_rate: float = 0.0  # prompt tokens fetched from the shared tier / all prompt tokens


def _pcts(values: np.ndarray) -> tuple[float, float, float]:
    if values.size == 0:
        return (math.nan, math.nan, math.nan)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return (float(p50), float(p90), float(p99))


def summarise(run: RunResult, slo: SLOTargets) -> Summary:
    """Computes the `Summary` of one run."""
    reqs = run.requests
    n = len(reqs)
    done = [r for r in reqs if not math.isnan(r.finished)]
    ttft = np.array([r.ttft for r in done])
    tpot = np.array([r.tpot for r in done if r.output_tokens > 1])
    prompt = np.array([r.input_tokens for r in done], dtype=float)
    ttft_ok = ttft <= slo.ttft_s + slo.ttft_per_1k_tokens_s * prompt / 1000.0
    tpot_all = np.array([r.tpot for r in done])
    tpot_ok = tpot_all <= slo.tpot_s
    both = ttft_ok & tpot_ok
    span = (reqs[-1].arrival - reqs[0].arrival) if n > 1 else 1.0
    served = np.array(run.served, dtype=float)
    mean_served = served.mean() if served.size else 0.0
    busy = np.array(run.busy_s)
    horizon = max(run.end_time, 1e-9)
    started = [r for r in reqs if not math.isnan(r.started)]
    return Summary(
        policy=run.policy,
        requests=n,
        unfinished=n - len(done),
        ttft=_pcts(ttft),
        tpot=_pcts(tpot),
        e2e=_pcts(np.array([r.e2e for r in done])),
        queue=_pcts(np.array([r.queued for r in started])),
        ttft_attainment=float(ttft_ok.sum()) / n if n else math.nan,
        tpot_attainment=float(tpot_ok.sum()) / n if n else math.nan,
        slo_attainment=float(both.sum()) / n if n else math.nan,
        goodput_rps=float(both.sum()) / span if span > 0 else math.nan,
        hit_rate=(
            sum(r.cached_tokens for r in started) / max(1, sum(r.input_tokens for r in started))
        ),
        served_max_over_mean=float(served.max() / mean_served) if mean_served else math.nan,
        served_cv=float(served.std() / mean_served) if mean_served else math.nan,
        max_utilisation=float(busy.max() / horizon) if busy.size else math.nan,
        wall_s=run.wall_s,
        tier_hit_rate=(
            sum(r.tier_tokens for r in started) / max(1, sum(r.input_tokens for r in started))
        ),
        decide_us=(
            run.decide_wall_s / n * 1e6 if n and not math.isnan(run.decide_wall_s) else math.nan
        ),
    )
