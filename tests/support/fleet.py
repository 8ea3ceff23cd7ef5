"""A real router (`RouterServer`: both fronts, the Registry) with real workers (`WorkerHost`,
real engine on the generated tiny checkpoint), all on loopback, with credentials on: client
API keys, an admin token and the worker-plane token. The attacker tests talk to it only
through its ports, as an outsider would."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.router.front.auth import Credentials
from mainsail.router.server import RouterServer
from mainsail.router.settings import RouterConfig
from mainsail.spec.engine_settings import EngineSettings
from mainsail.spec.worker_auth import WorkerCredential
from mainsail.workers.host import WorkerHost
from mainsail.workers.worker_spec import WorkerSpec

CLIENT_KEYS = ("sk-tenant-a", "sk-tenant-b")
ADMIN_TOKEN = "admin-secret"
WORKER = WorkerCredential(token=secrets.token_hex(32))
MODEL = "tiny"


@dataclass
class Fleet:
    router: RouterServer
    workers: list[WorkerHost] = field(default_factory=list)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.router.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.router.grpc_port}"

    @property
    def fleet(self) -> str:
        """The router's fleet port (workers register there)."""
        return f"127.0.0.1:{self.router.fleet_port}"

    def key(self, i: int = 0) -> dict[str, str]:
        return {"Authorization": f"Bearer {CLIENT_KEYS[i]}"}

    def metadata(self, i: int = 0) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {CLIENT_KEYS[i]}"),)

    def worker_ids(self) -> set[str]:
        return {e.worker_id for e in self.router.registry.entries()}

    async def generate(
        self, request: pb.GenerateRequest, move_after: int | None = None, timeout: float = 120
    ) -> tuple[list[int], list[str], pb.GenerateResponse]:
        """Tokens, the worker of each response, and the last response of one gRPC stream;
        after ``move_after`` tokens the request is moved (with its KV) to the other worker."""
        tokens: list[int] = []
        workers: list[str] = []
        last = pb.GenerateResponse()
        async with grpc.aio.insecure_channel(self.grpc) as channel:
            stub = pb_grpc.InferenceStub(channel)
            async for last in stub.Generate(request, metadata=self.metadata(), timeout=timeout):
                tokens += last.token_ids
                workers.append(last.worker_id)
                if move_after is not None and len(tokens) >= move_after:
                    move_after = None
                    (target,) = self.worker_ids() - {last.worker_id}
                    assert await self.router.router.migrate(last.request_id, target)
        return tokens, workers, last

    def counter(self, name: str, suffix: str = "_total") -> float:
        """The router's ``mainsail_router_<name>_total`` counter (or another sample of
        ``name``: ``suffix`` ``_count``, ``_sum`` of a histogram), from its exposition."""
        for line in self.router.router.metrics.render().decode().splitlines():
            if line.startswith(f"mainsail_router_{name}{suffix} "):
                return float(line.split()[1])
        raise AssertionError(f"no counter {name}")


@asynccontextmanager
async def fleet(
    model_dir: Path,
    workers: int = 2,
    engine: EngineSettings | None = None,
    worker_credential: WorkerCredential = WORKER,
    max_model_len: int = 512,
    admin_token: str | None = ADMIN_TOKEN,
    **config: Any,
) -> AsyncIterator[Fleet]:
    """A router and ``workers`` registered workers; everything stopped on the way out.
    ``admin_token`` None: a router configured without one (its admin API refuses all)."""
    settings = RouterConfig(
        model_name=MODEL,
        model_dir=model_dir,
        http_port=0,
        grpc_port=0,
        fleet_port=0,
        max_model_len=max_model_len,
        **config,
    )
    router = RouterServer(
        settings,
        credentials=Credentials(api_keys=frozenset(CLIENT_KEYS), admin_token=admin_token),
        worker_credential=worker_credential,
    )
    out = Fleet(router)
    try:
        await router.start()
        for i in range(workers):
            host = WorkerHost(
                WorkerSpec(
                    worker_id=f"w{i}",
                    model_name=MODEL,
                    model_dir=model_dir,
                    engine=engine or EngineSettings(max_model_len=512),
                    router_address=f"127.0.0.1:{router.fleet_port}",
                ),
                worker_credential,
            )
            out.workers.append(host)
            await host.start()
            await host.wait_registered(30)
        yield out
    finally:
        for host in out.workers:
            await host.stop()
        await router.stop()


@dataclass
class Background:
    """A fleet served from its own event loop in a thread, for synchronous clients (the
    Hypothesis fuzzers): `call` runs a coroutine on that loop."""

    fleet: Fleet
    loop: asyncio.AbstractEventLoop

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)
