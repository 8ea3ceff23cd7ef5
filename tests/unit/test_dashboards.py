"""The chart's Grafana dashboard only queries metrics the router really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.fleet.pool_load import PoolLoadCollector
from mainsail.router.fleet.registry import WorkerEntry
from mainsail.router.metrics import RouterMetrics

pytestmark = pytest.mark.unit
DASHBOARD = Path(__file__).resolve().parents[2] / "charts/mainsail/dashboards/mainsail-router.json"


def exported_names() -> set[str]:
    """Sample names of a router's /metrics with every labelled family touched once."""
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
    text = metrics.render().decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_every_query_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 12
    used = {name for e in exprs for name in re.findall(r"\bmainsail_[a-z0-9_]+", e)}
    missing = used - exported_names()
    assert not missing, f"dashboard queries metrics the router does not export: {missing}"
    # Everything an operator watches is on it: latency, cache hits, pool load, moves.
    for needed in ("ttft_seconds_bucket", "cached_prompt_tokens_total", "pool_kv_blocks_used",
                   "resumes_total", "handoffs_total", "queued_requests"):  # fmt: skip
        assert any(name.endswith(needed) for name in used), needed


def test_panels_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace"} <= variables
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert 'namespace="$namespace"' in target["expr"], target["expr"]
