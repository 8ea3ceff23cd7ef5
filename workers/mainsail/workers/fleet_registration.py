"""A worker registers with every router replica and follows replicas as they come and go.

Why one session per router rather than one registration broadcast: the routers are
independent (active-active), so each needs the worker's registration, its heartbeats and its
per-router in-flight count; and a router that is dead, slow or not yet serving must never
delay the others. So each discovered address gets its own `Registrar` task with its own
channel, retry and back-off, and nothing waits on another session.

`FleetRegistrar.run` asks the discovery seam (`router_discovery`) for the current addresses
every `period` seconds: a new address gets a session; a session whose address disappeared is
stopped (its router is gone or scaled away; it would expire the worker on its own). A refusal
ends only that router's session, kept as a refusal (`refused`) until its address disappears
and comes back, so a misconfigured router does not take the worker away from the others.
A failed resolution keeps the sessions that run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.spec.worker_auth import WorkerCredential
from mainsail.workers.registration import Registrar, RegistrationRefused
from mainsail.workers.router_discovery import RouterDiscovery

log = logging.getLogger(__name__)


@dataclass
class _Session:
    registrar: Registrar
    task: asyncio.Task[None]


class FleetRegistrar:
    """One `Registrar` session per router the discovery reports; cancel `run()` to stop."""

    def __init__(
        self,
        discovery: RouterDiscovery,
        info: pb.WorkerInfo,
        load: Callable[[], pb.LoadSnapshot],
        *,
        in_flight: Callable[[str], int] | None = None,
        credential: WorkerCredential | None = None,
        retry_s: float = 0.5,
    ) -> None:
        self.discovery = discovery
        self.info = info
        self.load = load
        self.in_flight = in_flight
        self.credential = credential or WorkerCredential()
        self.retry_s = retry_s
        self.sessions: dict[str, _Session] = {}
        self._registrars: dict[str, Registrar] = {}  # every discovered router, until it goes
        self.refused: dict[str, str] = {}
        self.resolved = False  # at least one resolution answered
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()

    async def run(self) -> None:
        """Resolve, reconcile the sessions, sleep `period`; forever (cancel to stop)."""
        try:
            while True:
                try:
                    addresses = await self.discovery.resolve()
                except OSError as exc:
                    log.warning("router discovery failed (%s); sessions kept", exc)
                else:
                    self.reconcile(addresses)
                await asyncio.sleep(self.discovery.period)
        finally:
            self.stop_sessions()

    def reconcile(self, addresses: frozenset[str]) -> None:
        """Start a session per new address, stop those whose address went away."""
        for address in [a for a in self.sessions if a not in addresses]:
            log.info("router %s went away; stopping its session", address)
            self.sessions.pop(address).task.cancel()
            self._registrars.pop(address, None)
        for address in [a for a in self.refused if a not in addresses]:
            del self.refused[address]
            self._registrars.pop(address, None)
        for address in sorted(addresses):
            if address not in self.sessions and address not in self.refused:
                self._start(address)
        self.resolved = True
        self._notify()

    def _start(self, address: str) -> None:
        registrar = Registrar(
            address,
            self.info,
            self.load,
            retry_s=self.retry_s,
            credential=self.credential,
            in_flight=self.in_flight,
            on_change=self._notify,
        )
        task = asyncio.get_running_loop().create_task(registrar.run())
        session = _Session(registrar, task)
        self.sessions[address] = session
        self._registrars[address] = registrar
        task.add_done_callback(lambda t: self._ended(address, session, t))

    def _ended(self, address: str, session: _Session, task: asyncio.Task[None]) -> None:
        if self.sessions.get(address) is session:
            del self.sessions[address]
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                detail = str(exc) if isinstance(exc, RegistrationRefused) else repr(exc)
                log.error("router %s refused worker %s: %s", address, self.info.worker_id, detail)
                self.refused[address] = detail
        self._notify()

    def registered_with(self) -> set[str]:
        """Addresses of the routers this worker is registered with now."""
        return {a for a, s in self.sessions.items() if s.registrar.registered.is_set()}

    def router_ids(self) -> dict[str, str]:
        """address -> router id, for the routers registered with."""
        return {
            a: s.registrar.router_id
            for a, s in self.sessions.items()
            if s.registrar.registered.is_set()
        }

    async def wait_registered(self, timeout: float, *, every: bool = True) -> None:
        """Return once registered with every discovered router (``every``) or with one;
        raise `RegistrationRefused` when a router refused (``every``) or all did, and
        `TimeoutError` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            if self.refused and (every or not self.sessions):
                address, detail = next(iter(self.refused.items()))
                raise RegistrationRefused(f"router {address}: {detail}")
            registered = self.registered_with()
            if self.resolved and registered and (not every or registered == set(self.sessions)):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"worker {self.info.worker_id} registered with {len(registered)} of "
                    f"{len(self.sessions)} routers after {timeout} s"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def stop_sessions(self) -> None:
        """Cancel every session."""
        for session in self.sessions.values():
            session.task.cancel()

    async def deregister(self) -> None:
        """Tell every router this worker is leaving (best effort, all at once); call after
        cancelling `run` so no heartbeat registers it again."""
        registrars = list(self._registrars.values())
        await asyncio.gather(*(r.deregister() for r in registrars), return_exceptions=True)
