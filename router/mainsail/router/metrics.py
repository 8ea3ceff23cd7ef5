"""The router's Prometheus metrics, on a registry of its own (no process-wide globals).

Names carry the `mainsail_router_` prefix; `docs/protocol.md` lists them with what the
autoscaler reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
_FAST_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Latency histograms are per model (served name or adapter), pool (worker role) and SLO
# class: label values come only from the router's configuration and the fixed role names,
# never from client strings, so the series count stays bounded.
ROUTE_LABELS = ("model", "pool", "slo_class")


@dataclass(frozen=True)
class RouteLatency:
    """The latency histogram children of one (model, pool, SLO class)."""

    ttft: Any
    itl: Any
    e2e: Any


class RouterMetrics:
    """Counters, gauges and histograms the router updates on its request path."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "mainsail_router_requests",
            "Requests by front and outcome.",
            ["front", "outcome"],
            registry=r,
        )
        self.inflight = Gauge(
            "mainsail_router_inflight_requests",
            "Requests dispatched and not finished.",
            registry=r,
        )
        self.queued = Gauge(
            "mainsail_router_queued_requests", "Requests waiting for a worker.", registry=r
        )
        self.workers = Gauge(
            "mainsail_router_workers", "Registered workers by role.", ["role"], registry=r
        )
        self.ttft = Histogram(
            "mainsail_router_ttft_seconds",
            "Time to first token seen by the router.",
            ROUTE_LABELS,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "mainsail_router_inter_token_latency_seconds",
            "Time between streamed tokens seen by the router.",
            ROUTE_LABELS,
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "mainsail_router_e2e_seconds",
            "Request latency, arrival to last token.",
            ROUTE_LABELS,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._latency: dict[tuple[str, str, str], RouteLatency] = {}
        self.schedule = Histogram(
            "mainsail_router_schedule_seconds",
            "Time to choose a worker (index + profile).",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.plugin = Histogram(
            "mainsail_router_plugin_seconds",
            "Time spent per scheduling plugin.",
            ["plugin"],
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "mainsail_router_prompt_tokens", "Prompt tokens routed.", registry=r
        )
        self.cached_tokens = Counter(
            "mainsail_router_cached_prompt_tokens",
            "Prompt tokens served from KV cache.",
            registry=r,
        )
        self.generation_tokens = Counter(
            "mainsail_router_generation_tokens", "Tokens generated.", registry=r
        )
        self.expected_hit_blocks = Counter(
            "mainsail_router_index_hit_blocks",
            "Prefix blocks the KV index predicted cached.",
            ["mode"],
            registry=r,
        )
        self.index_entries = Gauge(
            "mainsail_router_kv_index_entries",
            "Block ids held by the global KV index.",
            registry=r,
        )
        self.failovers = Counter(
            "mainsail_router_failovers",
            "Requests moved to another worker before any token.",
            registry=r,
        )
        self.worker_refused = Counter(
            "mainsail_router_worker_refused_requests",
            "Requests a worker refused (their own error; the worker stays in service).",
            registry=r,
        )
        self.resumes = Counter(
            "mainsail_router_resumes",
            "Requests moved to another worker after their first token (worker failed).",
            registry=r,
        )
        self.migrations = Counter(
            "mainsail_router_migrations",
            "Streaming requests moved to another worker on request (drain, migrate).",
            registry=r,
        )
        self.kv_migrations = Counter(
            "mainsail_router_kv_migrations",
            "Moves whose KV was copied to the target worker (included in migrations).",
            registry=r,
        )
        self.kv_migration_failures = Counter(
            "mainsail_router_kv_migration_failures",
            "Moves with the KV that failed and fell back to recompute.",
            registry=r,
        )
        self.kv_migration_pause = Histogram(
            "mainsail_router_kv_migration_pause_seconds",
            "How long the source worker paused a request it moved with its KV (its report).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.kv_migration_seconds = Histogram(
            "mainsail_router_kv_migration_seconds",
            "A move with the KV from the router's ask to the source's answer (all stages).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rebalance_moves = Counter(
            "mainsail_router_rebalance_moves",
            "Streaming requests moved by automatic rebalancing (included in migrations).",
            registry=r,
        )
        self.handoffs = Counter(
            "mainsail_router_handoffs",
            "Disaggregated requests moved from their prefill worker to a decode worker.",
            registry=r,
        )
        self.shed = Counter(
            "mainsail_router_shed",
            "Requests refused with 429 by flow control, by reason: queue_full (a bound of the "
            "flow queue), displaced (dropped while waiting for a higher band or on pressure), "
            "predicted_ttft (admission: no worker could meet the TTFT target).",
            ["reason"],
            registry=r,
        )
        self.refusals = Counter(
            "mainsail_router_worker_refusals",
            "Worker registrations refused, by reason.",
            ["reason"],
            registry=r,
        )

    def latency(self, model: str, pool: str, slo_class: str) -> RouteLatency:
        """The histograms for one label set (callers pass configured names only)."""
        key = (model, pool, slo_class)
        found = self._latency.get(key)
        if found is None:
            found = self._latency[key] = RouteLatency(
                self.ttft.labels(*key), self.itl.labels(*key), self.e2e.labels(*key)
            )
        return found

    def render(self) -> bytes:
        """The text exposition format served at /metrics."""
        return bytes(generate_latest(self.registry))
