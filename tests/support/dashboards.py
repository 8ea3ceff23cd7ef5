"""The chart's Grafana dashboard, read the way the tests check it: its queries and the metric
names they use, split into the router's names and the workers' (vLLM's and Mainsail's)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[2] / "charts/mainsail/dashboards/mainsail-router.json"
ROUTER_NAME = re.compile(r"\bmainsail_router_[a-z0-9_]+")
WORKER_NAME = re.compile(r"\bvllm:[a-z0-9_:]+|\bmainsail_worker_[a-z0-9_]+")
ANY_NAME = re.compile(r"\b(?:vllm:|mainsail_)[a-z0-9_:]+")


def dashboard() -> dict[str, Any]:
    """The dashboard JSON."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries() -> list[str]:
    """Every panel target's PromQL expression."""
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def names(pattern: re.Pattern[str]) -> set[str]:
    """The metric names matching ``pattern`` that the dashboard's queries use."""
    return {name for e in queries() for name in pattern.findall(e)}
