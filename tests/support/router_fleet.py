"""Several real router replicas (`RouterServer`, both fronts and the Registry) sharing real
workers (`WorkerHost`, real engine on the generated tiny checkpoint), all on loopback: the
active-active tests and `bench/router_fleet.py`. Workers find the routers through the shipped
`FakeDiscovery` (the seam a cluster fills with DNS), so a test can add and remove replicas."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mainsail.router.front.auth import Credentials
from mainsail.router.server import RouterServer
from mainsail.router.settings import RouterConfig
from mainsail.spec.engine_settings import EngineSettings
from mainsail.spec.worker_auth import WorkerCredential
from mainsail.workers.host import WorkerHost
from mainsail.workers.router_discovery import FakeDiscovery
from mainsail.workers.worker_spec import WorkerSpec

MODEL = "tiny"
CLIENT_KEY = "sk-fleet"
ADMIN_TOKEN = "admin-fleet"
WORKER = WorkerCredential(token=secrets.token_hex(32))
HEADERS = {"Authorization": f"Bearer {CLIENT_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class RouterFleet:
    model_dir: Path
    config: dict[str, Any]
    discovery: FakeDiscovery = field(default_factory=FakeDiscovery)
    routers: list[RouterServer] = field(default_factory=list)
    workers: list[WorkerHost] = field(default_factory=list)

    def http(self, i: int) -> str:
        return f"http://127.0.0.1:{self.routers[i].http_port}"

    def fleet_address(self, router: RouterServer) -> str:
        return f"127.0.0.1:{router.fleet_port}"

    async def add_router(self) -> RouterServer:
        """One more replica; workers find it at their next discovery round."""
        settings = RouterConfig(
            model_name=MODEL,
            model_dir=self.model_dir,
            http_port=0,
            grpc_port=0,
            fleet_port=0,
            max_model_len=512,
            **self.config,
        )
        router = RouterServer(
            settings,
            credentials=Credentials(api_keys=frozenset({CLIENT_KEY}), admin_token=ADMIN_TOKEN),
            worker_credential=WORKER,
        )
        await router.start()
        self.routers.append(router)
        self.discovery.set(self.fleet_address(r) for r in self.routers)
        return router

    async def kill_router(self, router: RouterServer) -> None:
        """Stop a replica at once (its open streams end) and take it out of discovery."""
        self.routers.remove(router)
        await router.stop()
        self.discovery.set(self.fleet_address(r) for r in self.routers)

    async def add_worker(self, engine: EngineSettings | None = None) -> WorkerHost:
        host = WorkerHost(
            WorkerSpec(
                worker_id=f"w{len(self.workers)}",
                model_name=MODEL,
                model_dir=self.model_dir,
                engine=engine or EngineSettings(max_model_len=512),
            ),
            WORKER,
            discovery=self.discovery,
        )
        self.workers.append(host)
        await host.start()
        await host.wait_registered(60)
        return host


@asynccontextmanager
async def router_fleet(
    model_dir: Path, routers: int = 2, workers: int = 2, **config: Any
) -> AsyncIterator[RouterFleet]:
    """``routers`` replicas and ``workers`` workers registered with every replica."""
    config.setdefault("heartbeat_interval", 0.2)
    out = RouterFleet(model_dir, config)
    try:
        for _ in range(routers):
            await out.add_router()
        for _ in range(workers):
            await out.add_worker()
        yield out
    finally:
        for host in out.workers:
            await host.stop()
        for router in out.routers:
            await router.stop()


async def complete(
    http: httpx.AsyncClient, base: str, prompt: list[int] | str, max_tokens: int = 4
) -> dict[str, Any]:
    """One greedy /v1/completions answer (raises on an HTTP error)."""
    reply = await http.post(
        f"{base}/v1/completions",
        json={"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
        headers=HEADERS,
    )
    reply.raise_for_status()
    body: dict[str, Any] = reply.json()
    return body
