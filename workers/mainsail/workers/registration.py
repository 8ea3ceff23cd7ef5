"""A worker announces itself to the router and keeps heartbeating its load.

It calls the router's fleet port (the `Registry` service's own listener, never the clients'
port), over mutual TLS when the worker plane has TLS material (`WorkerCredential.open_channel`).

Registration carries the KV hashing parameters; a router that disagrees refuses the worker
and says why (`RegistrationRefused`), which the worker reports instead of serving traffic
that would be mis-routed. When the router forgets the worker (restart, missed heartbeats) the
next heartbeat says so and the worker registers again. Every call carries the worker-plane
token (`mainsail.spec.worker_auth`); a router that refuses the token (UNAUTHENTICATED) or has
none itself (PERMISSION_DENIED) ends the session with its detail (`RegistrationRefused`), as
retrying cannot help. A refusal with `retry_after` > 0 is temporary (the id is
still held by a live worker, for example this worker's previous process): the worker waits and
registers again instead of giving up.

One `Registrar` is one session with one router. With several router replicas a worker runs one
per replica (`fleet_registration.FleetRegistrar`), each independent. The router's reply names
the router (`router_id`); each heartbeat then says how many of the worker's requests came from
that router (`router_in_flight`), so the router can add the other replicas' requests to its
own live count without counting its own twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.spec.worker_auth import WorkerCredential

log = logging.getLogger(__name__)
_CREDENTIAL_REFUSALS = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
"""Registry answers about the worker token: final for this session (`mainsail.spec.worker_auth`)."""


class RegistrationRefused(Exception):
    """The router refused this worker; the message says why."""


class Registrar:
    """Registers ``info`` with the router whose fleet port is ``router_address`` and heartbeats
    until stopped."""

    def __init__(
        self,
        router_address: str,
        info: pb.WorkerInfo,
        load: Callable[[], pb.LoadSnapshot],
        *,
        retry_s: float = 0.5,
        credential: WorkerCredential | None = None,
        in_flight: Callable[[str], int] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.router_address = router_address
        self.credential = credential or WorkerCredential()
        self._metadata = self.credential.metadata
        self.info = info
        self.load = load
        self.retry_s = retry_s
        self.in_flight = in_flight
        self.on_change = on_change
        self.registered = asyncio.Event()
        self.refused: str | None = None
        self.router_id = ""

    def _set_registered(self, on: bool) -> None:
        if on == self.registered.is_set():
            return
        if on:
            self.registered.set()
        else:
            self.registered.clear()
        if self.on_change is not None:
            self.on_change()

    def snapshot(self) -> pb.LoadSnapshot:
        """This worker's load as reported to this router."""
        load = self.load()
        if self.in_flight is not None and self.router_id:
            load.router_in_flight = self.in_flight(self.router_id)
            load.router_id = self.router_id
        return load

    async def run(self) -> None:
        """Loop forever (cancel to stop); raises RegistrationRefused on a refusal."""
        async with self.credential.open_channel(self.router_address) as channel:
            stub = pb_grpc.RegistryStub(channel)
            interval = 1.0
            while True:
                try:
                    if not self.registered.is_set():
                        reply = await stub.Register(self.info, timeout=5.0, metadata=self._metadata)
                        if not reply.accepted and reply.retry_after > 0:
                            log.info("registration deferred: %s", reply.detail)
                            await asyncio.sleep(min(reply.retry_after, 30.0))
                            continue
                        if not reply.accepted:
                            self.refused = reply.detail
                            raise RegistrationRefused(reply.detail)
                        interval = reply.heartbeat_interval or 1.0
                        self.router_id = reply.router_id
                        self._set_registered(True)
                        log.info("registered %s with %s", self.info.worker_id, self.router_address)
                    beat = await stub.Heartbeat(
                        pb.HeartbeatRequest(worker_id=self.info.worker_id, load=self.snapshot()),
                        timeout=5.0,
                        metadata=self._metadata,
                    )
                    if not beat.known:
                        self._set_registered(False)
                        continue
                    await asyncio.sleep(interval)
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                    if code in _CREDENTIAL_REFUSALS:
                        self.refused = exc.details() or code.name
                        raise RegistrationRefused(f"{code.name}: {self.refused}") from exc
                    log.debug("router unreachable (%s); retrying", exc.code().name)
                    self._set_registered(False)
                    await asyncio.sleep(self.retry_s)

    async def deregister(self) -> None:
        """Tell the router this worker is leaving (best effort)."""
        async with self.credential.open_channel(self.router_address) as channel:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await pb_grpc.RegistryStub(channel).Deregister(
                    pb.DeregisterRequest(worker_id=self.info.worker_id),
                    timeout=2.0,
                    metadata=self._metadata,
                )
