"""Status's one I/O seam to the router: is it reachable, and how many workers of each role
have registered with it.

Why registered workers and not Ready pods: a worker pod is Ready when its Ray node is up, long
before the worker on it has loaded the model and registered, and a registered worker is what
serves. Why `/metrics` (`mainsail_router_workers{role}`, the router's registry per role): it
is the scrape the autoscaler already makes, needs no admin credential (the operator reads no
Secrets), and answers the same question as the admin API's `GET /workers`. Synchronous
because the reconciler is; the call is bounded by a short timeout.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Protocol

from prometheus_client.parser import text_string_to_metric_families

from mainsail.spec.pool_signals import QUEUED, ROLE_LABEL, WORKERS


class RouterUnreachable(RuntimeError):
    """The router could not be read; the message says how it failed."""


class RouterProbe(Protocol):
    """Role -> registered workers, from one deployment's router."""

    def registered(self, url: str) -> Mapping[str, int]: ...


def registered_workers(text: str) -> dict[str, int]:
    """Role -> registered workers from the router's exposition text (a role with none may be
    absent); `RouterUnreachable` when the text is not a Mainsail router's."""
    counts: dict[str, int] = {}
    mainsail = False
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == QUEUED:
                    mainsail = True
                elif sample.name == WORKERS:
                    role = sample.labels.get(ROLE_LABEL, "")
                    counts[role] = counts.get(role, 0) + int(sample.value)
    except ValueError as exc:
        raise RouterUnreachable(f"unreadable metrics: {exc}") from exc
    if not mainsail:
        raise RouterUnreachable("not a Mainsail router (no mainsail_router_* metrics)")
    return counts


class HttpRouterProbe:
    """`RouterProbe` over HTTP: one GET with a timeout."""

    def __init__(self, timeout_seconds: float = 2.0) -> None:
        self._timeout = timeout_seconds

    def registered(self, url: str) -> Mapping[str, int]:
        try:
            with urllib.request.urlopen(url, timeout=self._timeout) as resp:
                text = resp.read(4 * 2**20).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            raise RouterUnreachable(f"GET {url}: HTTP {exc.code}") from exc
        except (OSError, ValueError) as exc:
            raise RouterUnreachable(f"GET {url}: {type(exc).__name__}: {exc}") from exc
        return registered_workers(text)


class StaticRouterProbe:
    """`RouterProbe` fake for tests and demos: answers ``counts``, or raises `RouterUnreachable`
    with ``error`` when it is set; remembers the URLs it was asked."""

    def __init__(self, counts: Mapping[str, int] | None = None, error: str | None = None) -> None:
        self.counts = dict(counts or {})
        self.error = error
        self.urls: list[str] = []

    def registered(self, url: str) -> Mapping[str, int]:
        self.urls.append(url)
        if self.error is not None:
            raise RouterUnreachable(self.error)
        return dict(self.counts)
