"""The worker's router-discovery seam and its one-session-per-router registration.

Static and DNS discovery (the resolver injected), the shipped fake, and `FleetRegistrar`
against in-process gRPC Registry servers (a recording servicer, the fast tier; the
integration tier runs real routers): one session per router, following routers that come and
go, a dead router never blocking the others, a refusal ending only its own session.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from support.registry_calls import registry_on_loopback

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.spec.worker_auth import WorkerCredential
from mainsail.workers.fleet_registration import FleetRegistrar
from mainsail.workers.registration import RegistrationRefused
from mainsail.workers.router_discovery import (
    DnsDiscovery,
    FakeDiscovery,
    StaticDiscovery,
    discovery_from,
    split_address,
)

pytestmark = pytest.mark.unit
TOKEN = WorkerCredential(token="t0ken")


class RecordingRegistry(pb_grpc.RegistryServicer):
    """A Registry that accepts (or refuses) and records what each worker sent."""

    def __init__(self, router_id: str, refuse: str = "") -> None:
        self.router_id = router_id
        self.refuse = refuse
        self.registered: list[str] = []
        self.beats: list[pb.LoadSnapshot] = []
        self.deregistered: list[str] = []
        self.tokens: list[str] = []

    async def Register(self, request: pb.WorkerInfo, context: object) -> pb.RegisterReply:
        self.tokens.append(dict(context.invocation_metadata()).get("authorization", ""))  # type: ignore[attr-defined]
        if self.refuse:
            return pb.RegisterReply(accepted=False, detail=self.refuse)
        self.registered.append(request.worker_id)
        return pb.RegisterReply(accepted=True, heartbeat_interval=0.05, router_id=self.router_id)

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: object) -> pb.HeartbeatReply:
        self.beats.append(request.load)
        return pb.HeartbeatReply(known=True)

    async def Deregister(
        self, request: pb.DeregisterRequest, context: object
    ) -> pb.DeregisterReply:
        self.deregistered.append(request.worker_id)
        return pb.DeregisterReply()


def free_address() -> str:
    """A loopback port nothing listens on (a dead router)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def fleet(discovery: FakeDiscovery, per_router: dict[str, int] | None = None) -> FleetRegistrar:
    counts = per_router or {}
    return FleetRegistrar(
        discovery,
        pb.WorkerInfo(worker_id="w0", address="127.0.0.1:1", model="m"),
        lambda: pb.LoadSnapshot(worker_id="w0", running=5, waiting=2),
        in_flight=lambda router_id: counts.get(router_id, 0),
        credential=TOKEN,
        retry_s=0.05,
    )


def test_static_discovery_validates_addresses() -> None:
    assert asyncio.run(StaticDiscovery(["a:1", "b:2"]).resolve()) == {"a:1", "b:2"}
    with pytest.raises(ValueError, match="at least one"):
        StaticDiscovery([])
    with pytest.raises(ValueError, match="'nope' is not host:port"):
        StaticDiscovery(["nope"])
    assert split_address("[::1]:50051") == ("::1", 50051)


def test_dns_discovery_pairs_every_record_with_the_port() -> None:
    asked: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return ["10.1.0.5", "10.1.0.6", "fd00::7", "10.1.0.5"]

    dns = DnsDiscovery("mx-router-peers.ns.svc:50051", period=2.0, resolver=resolver)
    assert asyncio.run(dns.resolve()) == {"10.1.0.5:50051", "10.1.0.6:50051", "[fd00::7]:50051"}
    assert asked == [("mx-router-peers.ns.svc", 50051)]


def test_dns_discovery_reads_a_missing_name_as_no_routers() -> None:
    async def gone(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def broken(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    assert asyncio.run(DnsDiscovery("r:1", resolver=gone).resolve()) == frozenset()
    with pytest.raises(OSError):
        asyncio.run(DnsDiscovery("r:1", resolver=broken).resolve())


def test_discovery_from_a_spec_prefers_dns() -> None:
    assert isinstance(discovery_from(["a:1"], "peers:1"), DnsDiscovery)
    assert isinstance(discovery_from(["a:1"], None), StaticDiscovery)


async def test_one_session_per_router_each_told_its_own_share() -> None:
    a, b = RecordingRegistry("ra"), RecordingRegistry("rb")
    async with registry_on_loopback(a) as addr_a, registry_on_loopback(b) as addr_b:
        registrar = fleet(FakeDiscovery([addr_a, addr_b]), {"ra": 3, "rb": 1})
        task = asyncio.create_task(registrar.run())
        try:
            await registrar.wait_registered(5)
            assert registrar.registered_with() == {addr_a, addr_b}
            while not (a.beats and b.beats):
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
        await registrar.deregister()
    assert a.registered == b.registered == ["w0"]
    assert a.tokens == b.tokens == ["Bearer t0ken"]
    assert (a.beats[-1].router_id, a.beats[-1].router_in_flight) == ("ra", 3)
    assert (b.beats[-1].router_id, b.beats[-1].router_in_flight) == ("rb", 1)
    assert a.beats[-1].running == 5
    assert a.deregistered == b.deregistered == ["w0"]


async def test_follows_routers_coming_and_going_and_a_dead_one_blocks_nobody() -> None:
    a, b = RecordingRegistry("ra"), RecordingRegistry("rb")
    dead = free_address()
    async with registry_on_loopback(a) as addr_a, registry_on_loopback(b) as addr_b:
        discovery = FakeDiscovery([dead, addr_a])
        registrar = fleet(discovery)
        task = asyncio.create_task(registrar.run())
        try:
            await registrar.wait_registered(5, every=False)
            assert registrar.registered_with() == {addr_a}  # the dead one retries apart
            assert set(registrar.sessions) == {dead, addr_a}
            with pytest.raises(TimeoutError, match="1 of 2 routers"):
                await registrar.wait_registered(0.3)
            discovery.set([addr_a, addr_b])  # a router came, the dead one went
            await registrar.wait_registered(5)
            assert registrar.registered_with() == {addr_a, addr_b}
            assert set(registrar.sessions) == {addr_a, addr_b}
            discovery.set([addr_b])
            while addr_a in registrar.sessions:
                await asyncio.sleep(0.02)
            beats = len(a.beats)
            await asyncio.sleep(0.2)
            assert len(a.beats) == beats  # no more heartbeats to a router that went away
            discovery.failing = True  # resolution fails: the sessions keep running
            await asyncio.sleep(0.2)
            assert registrar.registered_with() == {addr_b}
        finally:
            task.cancel()


async def test_a_refusal_ends_only_that_routers_session() -> None:
    good, bad = RecordingRegistry("ra"), RecordingRegistry("rb", refuse="model mismatch: x")
    async with registry_on_loopback(good) as addr_good, registry_on_loopback(bad) as addr_bad:
        registrar = fleet(FakeDiscovery([addr_good, addr_bad]))
        task = asyncio.create_task(registrar.run())
        try:
            with pytest.raises(RegistrationRefused, match=f"router {addr_bad}: model mismatch"):
                await registrar.wait_registered(5)
            await registrar.wait_registered(5, every=False)  # still serving the good router
            assert registrar.registered_with() == {addr_good}
            assert addr_bad in registrar.refused and addr_bad not in registrar.sessions
            await asyncio.sleep(0.2)
            assert len(bad.tokens) == 1  # not retried while the address stays
        finally:
            task.cancel()
