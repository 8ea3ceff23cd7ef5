"""Which router replicas a worker registers with: the worker's one seam for finding routers.

Several router replicas serve one deployment side by side (active-active); each keeps its own
registry, KV index and load view, so a worker must register and heartbeat with every replica,
and follow replicas as they come and go. `RouterDiscovery.resolve()` answers "which router
addresses exist now"; `FleetRegistrar` (`fleet_registration.py`) runs one registration session
per answer and calls `resolve()` again every `period` seconds.

- `StaticDiscovery`: a fixed list (`mainsail up --routers N` knows its router ports).
- `DnsDiscovery`: the A records of a headless Kubernetes Service (one per router pod), resolved
  again periodically.
- `FakeDiscovery`: addresses a test sets and changes at will.

Why DNS and not the Kubernetes Endpoints API: a worker pod then needs no Kubernetes credential
and no RBAC (it runs model code; it should hold as little as possible), no Kubernetes client in
the worker image, and nothing changes when it runs outside Kubernetes. CoreDNS already serves a
headless Service's ready (here also not-yet-ready, `publishNotReadyAddresses`) pod addresses.
The cost is staleness: a new router is found within `period` plus the DNS cache TTL (CoreDNS:
5 s by default), which matters little because a registration session to an address that is not
serving yet only retries, and a vanished router's session is stopped at the next resolution
(until then its failures block no other session). A watch on Endpoints would be faster by a
few seconds and is not worth a credential on every worker.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

DEFAULT_PERIOD_S = 5.0
"""Seconds between DNS resolutions (CoreDNS's default TTL for Service records)."""

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> IP addresses``; injected so tests resolve without a DNS server."""


class RouterDiscovery(Protocol):
    """Where the router replicas are now."""

    period: float
    """Seconds between two `resolve()` calls."""

    async def resolve(self) -> frozenset[str]:
        """Every router's registration address (host:port) right now; raises OSError when
        the answer is unknown (the caller keeps the previous set)."""
        ...


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); ValueError naming the address otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"router address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def join_address(host: str, port: int) -> str:
    """(host, port) -> ``host:port`` (IPv6 in brackets, as gRPC wants)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class StaticDiscovery:
    """A fixed set of router addresses."""

    def __init__(self, addresses: Iterable[str], period: float = DEFAULT_PERIOD_S) -> None:
        found = frozenset(addresses)
        if not found:
            raise ValueError("at least one router address is required")
        for address in found:
            split_address(address)
        self.addresses = found
        self.period = period

    async def resolve(self) -> frozenset[str]:
        return self.addresses


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's resolver (getaddrinfo): every address of ``host``, TCP."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class DnsDiscovery:
    """The addresses a DNS name resolves to (a headless Service: one per router pod), each
    with ``port``."""

    def __init__(
        self,
        address: str,
        *,
        period: float = DEFAULT_PERIOD_S,
        resolver: Resolver = system_resolver,
    ) -> None:
        if period <= 0:
            raise ValueError(f"period must be > 0 seconds, got {period}")
        self.host, self.port = split_address(address)
        self.period = period
        self._resolver = resolver

    async def resolve(self) -> frozenset[str]:
        try:
            ips = await self._resolver(self.host, self.port)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
                return frozenset()  # the name exists only while a router pod does
            raise
        return frozenset(join_address(ip, self.port) for ip in ips)


class FakeDiscovery:
    """Router addresses a test sets (`set`); `resolve` returns the current set at once."""

    def __init__(self, addresses: Iterable[str] = (), period: float = 0.05) -> None:
        self.addresses = frozenset(addresses)
        self.period = period
        self.resolutions = 0
        self.failing = False

    def set(self, addresses: Iterable[str]) -> None:
        """The routers that exist from now on."""
        self.addresses = frozenset(addresses)

    async def resolve(self) -> frozenset[str]:
        self.resolutions += 1
        if self.failing:
            raise OSError("fake resolver failure")
        return self.addresses


def discovery_from(
    static: Iterable[str], dns: str | None, period: float = DEFAULT_PERIOD_S
) -> RouterDiscovery:
    """A worker spec's routers: a DNS name when given, else the static addresses."""
    if dns:
        return DnsDiscovery(dns, period=period)
    return StaticDiscovery(static, period=period)
