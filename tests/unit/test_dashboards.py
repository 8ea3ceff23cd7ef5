"""The chart's Grafana dashboard only queries metrics the router really exports (the worker
panels' names are checked against a real worker's /metrics in
tests/integration/test_worker_metrics.py)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.dashboards import ANY_NAME, ROUTER_NAME, WORKER_NAME, dashboard, names, queries
from support.documented_metrics import documented, not_exported

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.fleet.pool_load import PoolLoadCollector
from mainsail.router.fleet.registry import WorkerEntry
from mainsail.router.metrics import RouterMetrics

pytestmark = pytest.mark.unit


def exported_names(families: bool = False) -> set[str]:
    """Sample names of a router's /metrics with every labelled family touched once (and the
    family names too with ``families``)."""
    metrics = RouterMetrics()
    entry = WorkerEntry(
        info=pb.WorkerInfo(worker_id="w", address="w:1", role="decode", model="m"),
        last_seen=0.0,
    )
    metrics.registry.register(PoolLoadCollector(lambda: [entry]))
    metrics.requests.labels("http", "ok").inc()
    metrics.workers.labels("decode").set(1)
    metrics.plugin.labels("kv-prefix").observe(0.001)
    metrics.expected_hit_blocks.labels("exact").inc()
    metrics.refusals.labels("kv_hash").inc()
    latency = metrics.latency("m", "unified", "none")
    for histogram in (latency.ttft, latency.itl, latency.e2e):
        histogram.observe(0.01)
    text = metrics.render().decode()
    parsed = list(text_string_to_metric_families(text))
    found = {s.name for f in parsed for s in f.samples}
    return found | {f.name for f in parsed} if families else found


def test_every_documented_router_metric_is_exported() -> None:
    documented_names = documented("Router metrics")
    assert len(documented_names) >= 25
    gone = not_exported(documented_names, exported_names(families=True))
    assert not gone, f"docs/protocol.md documents router metrics it does not export: {gone}"


def test_every_query_names_an_exported_metric() -> None:
    assert len(queries()) >= 12
    used = names(ROUTER_NAME)
    # Every name is the router's or a worker's (those are checked against a real worker).
    assert names(ANY_NAME) == used | names(WORKER_NAME)
    missing = used - exported_names()
    assert not missing, f"dashboard queries metrics the router does not export: {missing}"
    # Everything an operator watches is on it: latency, cache hits, pool load, moves.
    for needed in ("ttft_seconds_bucket", "cached_prompt_tokens_total", "pool_kv_blocks_used",
                   "resumes_total", "handoffs_total", "queued_requests",
                   "inter_token_latency_seconds_bucket"):  # fmt: skip
        assert any(name.endswith(needed) for name in used), needed
    for needed in ("vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                   "vllm:prefix_cache_hits_total", "vllm:time_to_first_token_seconds_bucket",
                   "mainsail_worker_kv_tier_checksum_misses_total"):  # fmt: skip
        assert needed in names(WORKER_NAME), needed


def test_panels_are_well_formed() -> None:
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "namespace"} <= variables
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert 'namespace="$namespace"' in target["expr"], target["expr"]
