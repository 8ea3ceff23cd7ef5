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

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Protocol

from mainsail.operator.router_signals import metric_samples
from mainsail.spec.pool_signals import QUEUED, ROLE_LABEL, WORKERS


class RouterUnreachable(RuntimeError):
    """The router could not be read; the message says how it failed."""


class RouterProbe(Protocol):
    """Role -> registered workers, from one deployment's router; and draining a worker
    before its pod is removed."""

    def registered(self, url: str) -> Mapping[str, int]: ...

    def drain(self, base_url: str, worker_id: str, admin_token: str | None = None) -> int:
        """`POST <base>/workers/<id>/drain` (with the router's admin token when it has one):
        the worker takes no new request and its streams move to other workers; returns how
        many moved. Raises `RouterUnreachable`."""
        ...


def registered_workers(text: str) -> dict[str, int]:
    """Role -> registered workers from the router's exposition text (a role with none may be
    absent); `RouterUnreachable` when the text is not a Mainsail router's."""
    counts: dict[str, int] = {}
    mainsail = False
    try:
        for sample in metric_samples(text):
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

    def drain(self, base_url: str, worker_id: str, admin_token: str | None = None) -> int:
        url = f"{base_url.rstrip('/')}/workers/{urllib.parse.quote(worker_id, safe='')}/drain"
        headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        request = urllib.request.Request(url, data=b"", method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=max(self._timeout, 10.0)) as resp:
                body = json.loads(resp.read(2**16) or b"{}")
        except urllib.error.HTTPError as exc:
            raise RouterUnreachable(f"POST {url}: HTTP {exc.code}") from exc
        except (OSError, ValueError) as exc:
            raise RouterUnreachable(f"POST {url}: {type(exc).__name__}: {exc}") from exc
        return int(body.get("migrated", 0)) if isinstance(body, dict) else 0


class StaticRouterProbe:
    """`RouterProbe` fake for tests and demos: answers ``counts``, or raises `RouterUnreachable`
    with ``error`` when it is set; remembers the URLs it was asked."""

    def __init__(self, counts: Mapping[str, int] | None = None, error: str | None = None) -> None:
        self.counts = dict(counts or {})
        self.error = error
        self.urls: list[str] = []
        self.drained: list[str] = []

    def registered(self, url: str) -> Mapping[str, int]:
        self.urls.append(url)
        if self.error is not None:
            raise RouterUnreachable(self.error)
        return dict(self.counts)

    def drain(self, base_url: str, worker_id: str, admin_token: str | None = None) -> int:
        if self.error is not None:
            raise RouterUnreachable(self.error)
        self.drained.append(worker_id)
        return 0
