"""Reading every router replica of one deployment at once, each failure kept by URL.

Why its own module: the operator finds the replicas from the API's EndpointSlices
(`router_replicas`), `mainsail up` knows them because it started them; both then read the
same way and both autoscaling paths judge a partial read the same way (a pass may raise a
degree on what it read, never lower it). No Kubernetes here, so the local stack imports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from mainsail.operator.router_signals import SignalsUnavailable

T = TypeVar("T")


@dataclass
class ReplicaReads(Generic[T]):
    """What reading every router replica gave: the readings, and ``url: error`` per failure."""

    read: list[T] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def unavailable(self) -> str | None:
        """Why nothing was read (None when some replica was)."""
        return None if self.read else "; ".join(self.failed)

    @property
    def partial(self) -> str | None:
        """Some replicas read, not all: what a pass says when it holds a scale-down."""
        if not self.read or not self.failed:
            return None
        total = len(self.read) + len(self.failed)
        return f"{len(self.read)}/{total} router replicas read ({'; '.join(self.failed)})"


async def read_urls(urls: Sequence[str], read: Callable[[str], Awaitable[T]]) -> ReplicaReads[T]:
    """``read`` every URL at once. A replica that raises `SignalsUnavailable` is a failure of
    that replica; any other error propagates."""
    results = await asyncio.gather(*(read(url) for url in urls), return_exceptions=True)
    out: ReplicaReads[T] = ReplicaReads()
    for url, result in zip(urls, results, strict=True):
        if isinstance(result, SignalsUnavailable):
            out.failed.append(f"{url}: {result}")
        elif isinstance(result, BaseException):
            raise result
        else:
            out.read.append(result)
    return out
