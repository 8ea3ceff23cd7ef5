"""`EngineMetrics`: the load and latency figures the router and autoscaler read from a worker.

Histograms use fixed bucket bounds (seconds) so workers can be summed; ``counts`` has one
entry per bound (observations <= bound and > the previous bound) plus a final overflow bucket.
The recorder is updated only by the engine thread; `snapshot` copies it into a frozen record.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from mainsail.spec.kv_cost import FetchCostModel

TTFT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TPOT_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
E2E_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
EMA_ALPHA = 0.1


@dataclass(frozen=True)
class Histogram:
    """Bucketed observations: ``counts[i]`` for ``bounds[i-1] < x <= bounds[i]``, last = more."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float
    count: int


@dataclass
class _HistogramRecorder:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def freeze(self) -> Histogram:
        return Histogram(self.bounds, tuple(self.counts), self.total, self.count)


EMPTY_HISTOGRAM = Histogram((), (0,), 0.0, 0)


@dataclass(frozen=True)
class EngineMetrics:
    """A snapshot of one engine's state and counters (counters only grow).

    ``prefix_hit_tokens`` counts every prompt token served from the cache, including those
    fetched from the shared tier; ``redis_hit_tokens`` is the part fetched from Redis;
    ``prefix_query_tokens`` the prompt tokens looked up (each admission, as vLLM counts).
    ``e2e`` is arrival to finish; ``running_adapters`` / ``waiting_adapters`` the LoRA
    adapters of the running and queued requests (sorted).
    ``kv_tier_*``: blocks written to the tier, dropped because its write queue was full, and
    tier errors (each one closes the tier for its backoff).
    """

    running: int
    waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    prefix_hit_tokens: int
    prompt_tokens_total: int
    generation_tokens_total: int
    step_time_ms_last: float
    step_time_ms_ema: float
    ttft: Histogram
    tpot: Histogram
    preemptions: int
    num_requests_finished: int
    pending_prefill_tokens: int = 0  # prompt tokens admitted or queued, not yet computed
    redis_hit_tokens: int = 0
    kv_tier_stored_blocks: int = 0
    kv_tier_write_drops: int = 0
    kv_tier_errors: int = 0
    kv_tier_fetched_blocks: int = 0
    kv_tier_corrupt_blocks: int = 0  # fetched values whose checksum failed (read as misses)
    prefix_query_tokens: int = 0
    e2e: Histogram = EMPTY_HISTOGRAM
    running_adapters: tuple[str, ...] = ()
    waiting_adapters: tuple[str, ...] = ()
    kv_cost: FetchCostModel | None = None  # the engine's measured cost model (None: no step yet)
    kv_tier_id: str = ""  # `RedisKVTier.identity()` of the shared tier; "" = none
    kv_fetch_policy: str = ""  # the tier's fetch policy; "" = no tier

    @property
    def kv_utilization(self) -> float:
        """Fraction of KV blocks referenced by running sequences, in [0, 1]."""
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0


@dataclass
class MetricsRecorder:
    """Mutable counters owned by the engine loop."""

    prefix_hit_tokens: int = 0
    prefix_query_tokens: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    step_time_ms_last: float = 0.0
    step_time_ms_ema: float = 0.0
    preemptions: int = 0
    num_requests_finished: int = 0
    ttft: _HistogramRecorder = field(default_factory=lambda: _HistogramRecorder(TTFT_BUCKETS))
    tpot: _HistogramRecorder = field(default_factory=lambda: _HistogramRecorder(TPOT_BUCKETS))
    e2e: _HistogramRecorder = field(default_factory=lambda: _HistogramRecorder(E2E_BUCKETS))

    def observe_step(self, seconds: float) -> None:
        ms = seconds * 1000.0
        self.step_time_ms_last = ms
        first = self.step_time_ms_ema == 0.0
        self.step_time_ms_ema = (
            ms if first else (1 - EMA_ALPHA) * self.step_time_ms_ema + EMA_ALPHA * ms
        )

    def snapshot(
        self, running: int, waiting: int, kv_blocks_used: int, kv_blocks_total: int
    ) -> EngineMetrics:
        return EngineMetrics(
            running=running,
            waiting=waiting,
            kv_blocks_used=kv_blocks_used,
            kv_blocks_total=kv_blocks_total,
            prefix_hit_tokens=self.prefix_hit_tokens,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            step_time_ms_last=self.step_time_ms_last,
            step_time_ms_ema=self.step_time_ms_ema,
            ttft=self.ttft.freeze(),
            tpot=self.tpot.freeze(),
            preemptions=self.preemptions,
            num_requests_finished=self.num_requests_finished,
            prefix_query_tokens=self.prefix_query_tokens,
            e2e=self.e2e.freeze(),
        )
