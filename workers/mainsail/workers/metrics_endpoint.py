"""A worker's own `/metrics`: the engine's state under the names gateways already scrape.

Gateways (the Gateway API inference extension, llm-d) and autoscalers (KEDA recipes) read
vLLM's metric names from each model server, so a worker exports those names for what they
mean here, computed at scrape time from the engine's latest snapshot (`EngineMetrics`, an
immutable record the engine thread publishes after every step) — the scrape never touches
the engine loop. Mainsail's own figures (the shared KV tier) carry `mainsail_worker_`.
`docs/protocol.md` lists every name.

Each worker has a registry of its own (several workers share a process in tests) and serves
it on a small threaded HTTP server bound like its gRPC service. It exposes counts, sizes,
latencies and adapter names only: no prompt, token or request id ever reaches it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from mainsail.workers.engine import EngineMetrics, Histogram

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheConfig:
    """The static facts behind `vllm:cache_config_info` and `vllm:lora_requests_info`."""

    block_size: int
    num_gpu_blocks: int
    max_lora: int


class WorkerCollector(Collector):
    """Yields the worker's metric families from ``snapshot()`` at every scrape."""

    def __init__(
        self,
        model_name: str,
        snapshot: Callable[[], EngineMetrics],
        cache: CacheConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model_name = model_name
        self.snapshot = snapshot
        self.cache = cache
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        m = self.snapshot()
        model = [self.model_name]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric(model, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=["model_name"])
            family.add_metric(model, value)
            return family

        yield gauge("vllm:num_requests_running", "Requests in the running batch.", m.running)
        yield gauge("vllm:num_requests_waiting", "Requests queued for a slot.", m.waiting)
        yield gauge(
            "vllm:kv_cache_usage_perc",
            "Fraction of KV cache blocks in use (0..1).",
            m.kv_utilization,
        )
        yield counter(
            "vllm:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            m.prefix_query_tokens,
        )
        yield counter(
            "vllm:prefix_cache_hits",
            "Prompt tokens found in the prefix cache (device or KV tier).",
            m.prefix_hit_tokens,
        )
        yield counter("vllm:prompt_tokens", "Prefilled prompt tokens.", m.prompt_tokens_total)
        yield counter("vllm:generation_tokens", "Generated tokens.", m.generation_tokens_total)
        yield counter("vllm:num_preemptions", "Requests preempted.", m.preemptions)
        yield _histogram(
            "vllm:time_to_first_token_seconds", "Arrival to first token.", model, m.ttft
        )
        yield _histogram(
            "vllm:inter_token_latency_seconds", "Time between output tokens.", model, m.tpot
        )
        yield _histogram("vllm:e2e_request_latency_seconds", "Arrival to finish.", model, m.e2e)
        cache = GaugeMetricFamily(
            "vllm:cache_config_info",
            "KV cache configuration (value 1).",
            labels=["block_size", "num_gpu_blocks"],
        )
        cache.add_metric([str(self.cache.block_size), str(self.cache.num_gpu_blocks)], 1)
        yield cache
        lora = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "LoRA adapters of running and waiting requests (value: time of the reading).",
            labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
        )
        lora.add_metric(
            [
                str(self.cache.max_lora),
                ",".join(m.running_adapters),
                ",".join(m.waiting_adapters),
            ],
            self.clock(),
        )
        yield lora
        yield counter(
            "mainsail_worker_requests_finished",
            "Requests finished (any reason).",
            m.num_requests_finished,
        )
        yield gauge(
            "mainsail_worker_pending_prefill_tokens",
            "Prompt tokens queued or admitted, not yet computed.",
            m.pending_prefill_tokens,
        )
        yield counter(
            "mainsail_worker_kv_tier_hit_tokens",
            "Prompt tokens fetched from the shared KV tier (part of the prefix hits).",
            m.redis_hit_tokens,
        )
        yield counter(
            "mainsail_worker_kv_tier_fetched_blocks",
            "KV blocks read from the shared tier.",
            m.kv_tier_fetched_blocks,
        )
        yield counter(
            "mainsail_worker_kv_tier_stored_blocks",
            "KV blocks written to the shared tier.",
            m.kv_tier_stored_blocks,
        )
        yield counter(
            "mainsail_worker_kv_tier_write_drops",
            "KV blocks not written because the tier's write queue was full.",
            m.kv_tier_write_drops,
        )
        yield counter("mainsail_worker_kv_tier_errors", "Shared KV tier errors.", m.kv_tier_errors)
        yield counter(
            "mainsail_worker_kv_tier_checksum_misses",
            "KV blocks fetched whose checksum failed (read as misses).",
            m.kv_tier_corrupt_blocks,
        )


def _histogram(name: str, doc: str, labels: list[str], h: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["model_name"])
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip(h.bounds, h.counts, strict=False):
        running += n
        buckets.append((repr(float(bound)), running))
    buckets.append(("+Inf", h.count))
    family.add_metric(labels, buckets, sum_value=h.total)
    return family


class MetricsServer:
    """Serves one registry over HTTP on a daemon thread (off the worker's event loop)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = self._server.server_port

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_worker_metrics(
    model_name: str,
    snapshot: Callable[[], EngineMetrics],
    cache: CacheConfig,
    host: str,
    port: int,
) -> MetricsServer:
    """Start a worker's `/metrics` on ``host:port`` (0 = a free port) with its own registry.

    A fixed port that is taken (a replaced worker's predecessor still holding it) falls back
    to a free one with a warning: metrics are not worth failing the worker's start over, and
    the address actually bound is the one registered with the router."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(model_name, snapshot, cache))
    try:
        return MetricsServer(registry, host, port)
    except OSError as exc:
        if port == 0:
            raise
        log.warning("metrics port %s:%d unavailable (%s); serving on a free port", host, port, exc)
        return MetricsServer(registry, host, 0)
