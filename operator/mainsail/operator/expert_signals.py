"""The expert-parallel autoscaler's I/O seams to a deployment's router: read each pool's expert
figures and load from one router replica's `/metrics` (the scaler reads every replica and
merges them, `expert_merge`), list the workers and ask one to change its degree through the
admin API.

Why through the router: it already hears every worker's heartbeat (which carries the worker's
degree and expert load, `LoadSnapshot.expert_*`) and sums them per role at scrape time, and
its admin API is where the operator already drains workers with the router's admin token.
The operator never dials a worker itself (workers accept only the worker-plane credential, and
a NetworkPolicy admits only the router and Ray pods to them).

Secure by default: the admin calls send the router's admin token; without one the autoscaler
asks nothing (see `expert_scaler.py`).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from mainsail.operator.expert_merge import ExpertFigures, ExpertReading, expert_signals
from mainsail.operator.expert_parallel_policy import ExpertSignals
from mainsail.operator.router_signals import (
    metric_samples,
    scrape,
    signals_from_samples,
)
from mainsail.spec.pool_signals import (
    EXPERT_LABEL,
    EXPERT_PARALLEL,
    EXPERT_SWITCHING,
    EXPERT_TOKENS,
    ROLE_LABEL,
)


class ScaleFailed(RuntimeError):
    """The router (or the worker behind it) did not take a change of degree."""


@dataclass(frozen=True)
class WorkerDegree:
    """One registered worker's id, role and expert-parallel degrees (from `GET /workers`)."""

    worker_id: str
    role: str
    expert_parallel: int
    target: int


class ExpertRouter(Protocol):
    """What the expert-parallel autoscaler asks of a deployment's router."""

    async def expert_reading(self, metrics_url: str) -> ExpertReading:
        """One router replica's pool load and expert figures; `SignalsUnavailable`."""
        ...

    async def workers(self, admin_url: str, token: str) -> Sequence[WorkerDegree]:
        """Registered workers and their degrees; `ScaleFailed` when not readable."""
        ...

    async def scale(self, admin_url: str, token: str, worker_id: str, degree: int) -> None:
        """`POST /workers/<id>/experts`; `ScaleFailed` (with the router's message)."""
        ...


def parse_expert_reading(text: str) -> ExpertReading:
    """One router replica's pool load and expert figures from its exposition text (figures
    for roles with a sharded MoE worker only); `SignalsUnavailable` when it is not a
    Mainsail router's."""
    samples = metric_samples(text)
    pools = signals_from_samples(samples)
    degree: dict[str, int] = {}
    switching: dict[str, int] = {}
    tokens: dict[str, dict[int, float]] = {}
    for sample in samples:
        role = sample.labels.get(ROLE_LABEL, "")
        if sample.name == EXPERT_PARALLEL:
            degree[role] = int(sample.value)
        elif sample.name == EXPERT_SWITCHING:
            switching[role] = int(sample.value)
        elif sample.name == EXPERT_TOKENS:
            try:
                expert = int(sample.labels.get(EXPERT_LABEL, ""))
            except ValueError:
                continue
            tokens.setdefault(role, {})[expert] = sample.value
    experts: dict[str, ExpertFigures] = {}
    for role, current in degree.items():
        if current < 1:
            continue
        per_expert = tokens.get(role, {})
        load = tuple(max(0.0, per_expert.get(e, 0.0)) for e in range(len(per_expert)))
        experts[role] = ExpertFigures(current, max(0, switching.get(role, 0)), load)
    return ExpertReading(pools, experts)


def parse_expert_signals(text: str) -> dict[str, ExpertSignals]:
    """Role -> `ExpertSignals` from one router replica's exposition text."""
    return expert_signals([parse_expert_reading(text)])


class HttpExpertRouter:
    """`ExpertRouter` over HTTP, each call bounded by ``timeout_seconds``."""

    def __init__(self, timeout_seconds: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    async def expert_reading(self, metrics_url: str) -> ExpertReading:
        return await scrape(metrics_url, self._timeout, parse_expert_reading)

    async def workers(self, admin_url: str, token: str) -> Sequence[WorkerDegree]:
        url = f"{admin_url.rstrip('/')}/workers"
        body = await self._call("GET", url, token)
        out = []
        for item in body.get("data") or []:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                out.append(
                    WorkerDegree(
                        item["id"],
                        str(item.get("role") or "unified"),
                        int(item.get("expert_parallel") or 0),
                        int(item.get("expert_parallel_target") or 0),
                    )
                )
        return out

    async def scale(self, admin_url: str, token: str, worker_id: str, degree: int) -> None:
        worker = urllib.parse.quote(worker_id, safe="")
        url = f"{admin_url.rstrip('/')}/workers/{worker}/experts"
        await self._call("POST", url, token, {"expertParallel": degree})

    async def _call(
        self, method: str, url: str, token: str, payload: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.request(method, url, json=payload, headers=headers) as resp,
            ):
                text = await resp.text()
                if resp.status != 200:
                    raise ScaleFailed(f"{method} {url}: HTTP {resp.status}: {_message(text)}")
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ScaleFailed(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        return body if isinstance(body, dict) else {}


def _message(text: str) -> str:
    """The OpenAI-style error message of a router refusal (else the text, cut)."""
    import json

    try:
        error = json.loads(text).get("error") or {}
        return str(error.get("message") or text)[:500]
    except (ValueError, AttributeError):
        return text[:500]
