"""The autoscaler's one I/O seam: a pool's load, read from its router's `/metrics`.

Why scrape the router rather than a Prometheus server or every worker: the router already
sums its workers' heartbeats per role (`mainsail.router.fleet.pool_load`), it is the one component
every deployment has, and the operator then needs no monitoring stack to autoscale. A cluster
that has Prometheus can still drive a ServingPool with an HPA or KEDA on the same metric names
instead (the pool has a scale subresource); see docs/operator.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, TypeVar

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from mainsail.operator.autoscale_policy import PoolSignals
from mainsail.spec.pool_signals import POOL_PREFIX, QUEUED, ROLE_LABEL, WORKERS

T = TypeVar("T")


class SignalsUnavailable(RuntimeError):
    """The router could not be read (down, starting, or not a Mainsail router)."""


class SignalSource(Protocol):
    """Role -> load of one deployment's pools."""

    async def pool_signals(self, url: str) -> Mapping[str, PoolSignals]: ...


def metric_samples(text: str) -> list[Sample]:
    """Every sample of an exposition text, in order; `ValueError` if it is not one. The one
    parse of a scrape, whatever is read from it (pool load, expert figures, workers)."""
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def parse_signals(text: str) -> dict[str, PoolSignals]:
    """Role -> signals from the router's exposition text; `SignalsUnavailable` if absent."""
    return signals_from_samples(metric_samples(text))


def signals_from_samples(samples: Iterable[Sample]) -> dict[str, PoolSignals]:
    """Role -> signals from a scrape's samples (`metric_samples`); `SignalsUnavailable` if
    absent."""
    per_role: dict[str, dict[str, float]] = {}
    queued: float | None = None
    for sample in samples:
        name = sample.name
        if name == QUEUED:
            queued = sample.value
        elif name == WORKERS or name.startswith(POOL_PREFIX):
            role = sample.labels.get(ROLE_LABEL, "")
            key = "workers" if name == WORKERS else name[len(POOL_PREFIX) :]
            per_role.setdefault(role, {})[key] = sample.value
    if queued is None or not per_role:
        raise SignalsUnavailable("no mainsail_router_* pool metrics in the scrape")
    # Requests the router holds wait for any worker; every role that serves them sees them.
    out = {}
    for role, values in per_role.items():
        out[role] = PoolSignals(
            workers=int(values.get("workers", 0)),
            running=int(values.get("running", 0)),
            waiting=int(values.get("waiting", 0)),
            queued=int(queued),
            kv_blocks_used=int(values.get("kv_blocks_used", 0)),
            kv_blocks_total=int(values.get("kv_blocks_total", 0)),
        )
    return out


class RouterScrape:
    """`SignalSource` over HTTP: one GET of ``url`` per pass, with a timeout."""

    def __init__(self, timeout_seconds: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    async def pool_signals(self, url: str) -> Mapping[str, PoolSignals]:
        return await scrape(url, self._timeout, parse_signals)


async def scrape(url: str, timeout: aiohttp.ClientTimeout, parse: Callable[[str], T]) -> T:
    """GET a router's ``url`` (its `/metrics`) and ``parse`` the text; `SignalsUnavailable`
    naming the URL when the router cannot be reached, answers other than 200, or the text is
    unreadable (``parse`` raising `ValueError`)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url) as resp,
        ):
            if resp.status != 200:
                raise SignalsUnavailable(f"GET {url}: HTTP {resp.status}")
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SignalsUnavailable(f"GET {url}: {type(exc).__name__}: {exc}") from exc
    try:
        return parse(text)
    except ValueError as exc:
        raise SignalsUnavailable(f"GET {url}: unreadable metrics: {exc}") from exc
