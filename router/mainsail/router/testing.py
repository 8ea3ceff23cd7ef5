"""Fakes shipped with the router, for unit tests, demos and overhead benchmarks.

`ManualClock` is a clock that moves only when told: inject it into the router, park a request on
a timeout, `advance` past it and `Router.notify` - the timeout fires without the test waiting.

`FakeTransport` stands in for the gRPC transport: each registered address behaves like a
worker that streams `max_tokens` deterministic tokens, optionally slowly or failing at a
chosen point. It exercises the router's real request path (validation, scheduling,
fail-over, streaming) without an engine; it is never the only evidence that a feature works
— integration tests drive real workers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.errors import WorkerRefused
from mainsail.router.fleet.registry import WorkerRegistry
from mainsail.router.fleet.transport import TransportError
from mainsail.router.kvindex import GlobalKVIndex
from mainsail.router.routing.router import Router
from mainsail.router.scheduling import WorkerSnapshot, build_profile
from mainsail.router.settings import RouterConfig
from mainsail.spec.request_contract import DEFAULT_MAX_TOKENS
from mainsail.spec.tokenizer import Tokenizer


@dataclass
class FakeWorker:
    """How one fake worker behaves."""

    token_delay: float = 0.0
    pause_after: int | None = None
    """After this many tokens, stop streaming until the request is aborted (a move's first
    step): tests of drains and migrations then move a stream at a known token, whatever the
    machine's load."""
    fail_before_first: bool = False
    fail_after: int | None = None
    submitted: list[pb.WorkerRequest] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    kv_batches: list[pb.KVEventBatch] = field(default_factory=list)
    abort_seen: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    """Set on each abort: a paused stream waits on it rather than polling `aborted`."""
    draining: bool = False
    drain_epoch: int = 0
    """The draining state the worker holds (`Worker.Drain`), as a real worker does."""


class FakeTransport:
    """A `WorkerTransport` whose workers are `FakeWorker`s keyed by address."""

    def __init__(self) -> None:
        self.workers: dict[str, FakeWorker] = {}

    def add(self, address: str, worker: FakeWorker | None = None) -> FakeWorker:
        self.workers[address] = worker or FakeWorker()
        return self.workers[address]

    @property
    def moves_kv(self) -> bool:
        return False  # fake workers hold no KV: moves recompute

    async def migrate(
        self,
        address: str,
        request_id: str,
        target_address: str,
        trace: Mapping[str, str] | None = None,
    ) -> pb.MigrateReply:
        return pb.MigrateReply(detail="fake workers hold no KV")

    async def submit(self, address: str, request: pb.WorkerRequest) -> AsyncIterator[pb.TokenChunk]:
        worker = self.workers.get(address)
        if worker is None:
            raise TransportError(f"UNAVAILABLE: no worker at {address}")
        worker.submitted.append(request)
        if worker.fail_before_first:
            raise TransportError("UNAVAILABLE: worker is down")
        n = request.sampling.max_tokens or DEFAULT_MAX_TOKENS
        seed = request.prompt_token_ids[-1] if request.prompt_token_ids else 0
        for i in range(n):
            if worker.fail_after is not None and i >= worker.fail_after:
                raise TransportError("UNAVAILABLE: worker died")
            if worker.token_delay:
                await asyncio.sleep(worker.token_delay)
            if worker.pause_after is not None and i >= worker.pause_after:
                while request.request_id not in worker.aborted:
                    worker.abort_seen.clear()
                    await worker.abort_seen.wait()
            if request.request_id in worker.aborted:  # as the engine does: a final "abort"
                yield pb.TokenChunk(request_id=request.request_id, finish_reason="abort")
                return
            last = i == n - 1
            chunk = pb.TokenChunk(
                request_id=request.request_id,
                token_ids=[(seed + i) % 97 + 3],
                text=f" t{i}",
                finish_reason="length" if last else "",
            )
            if last:
                chunk.usage.prompt_tokens = len(request.prompt_token_ids)
                chunk.usage.completion_tokens = n
            yield chunk

    async def abort(self, address: str, request_id: str) -> None:
        worker = self.workers.get(address)
        if worker is not None:
            worker.aborted.append(request_id)
            worker.abort_seen.set()

    async def kv_events(self, address: str) -> AsyncIterator[pb.KVEventBatch]:
        worker = self.workers.get(address)
        for batch in worker.kv_batches if worker else []:
            yield batch
        await asyncio.Event().wait()

    async def drain(self, address: str, drain: bool) -> pb.DrainReply:
        worker = self.workers.get(address)
        if worker is None:
            raise TransportError(f"UNAVAILABLE: no worker at {address}")
        if worker.draining != drain:
            worker.draining = drain
            worker.drain_epoch += 1
        return pb.DrainReply(draining=worker.draining, drain_epoch=worker.drain_epoch)

    async def scale_experts(self, address: str, expert_parallel: int) -> pb.ScaleExpertsReply:
        if address not in self.workers:
            raise TransportError(f"UNAVAILABLE: no worker at {address}")
        raise WorkerRefused("FAILED_PRECONDITION: fake workers run no experts")

    async def drop(self, address: str) -> None:
        return None

    async def close(self) -> None:
        return None


def idle_worker(worker_id: str = "w", **changes: Any) -> WorkerSnapshot:
    """A healthy, idle unified worker snapshot; ``changes`` override any field (tests, demos)."""
    fields: dict[str, Any] = {
        "worker_id": worker_id,
        "role": "unified",
        "healthy": True,
        "running": 0,
        "waiting": 0,
        "max_num_seqs": 8,
        "kv_blocks_used": 0,
        "kv_blocks_total": 100,
        "adapters": frozenset(),
        "max_model_len": 4096,
        "outstanding": 0,
        "hash_fingerprint": "fp",
    }
    fields.update(changes)
    return WorkerSnapshot(**fields)


class ManualClock:
    """Seconds that pass only on `advance` (a `Router`'s ``clock``)."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def held_at_router(router: Router, count: int = 1) -> None:
    """Until ``count`` requests wait for a worker in ``router`` (bounded: 5 s)."""
    for _ in range(500):
        if router.chooser.waiting == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{router.chooser.waiting} requests waiting, expected {count}")


async def settle(turns: int = 10) -> None:
    """Let woken tasks run ``turns`` event-loop turns (no time passes on a `ManualClock`)."""
    for _ in range(turns):
        await asyncio.sleep(0)


def fake_router(
    model_dir: Path,
    model: str = "tiny",
    clock: Callable[[], float] | None = None,
    **config: Any,
) -> tuple[Router, FakeTransport]:
    """A real `Router` (tokenizer of ``model_dir``, default profile, exact KV index) over a
    `FakeTransport`, on ``clock`` if given (else real time); ``config`` overrides
    `RouterConfig` fields."""
    settings = RouterConfig(
        model_name=model, model_dir=model_dir, **{"max_model_len": 256, **config}
    )
    transport = FakeTransport()
    router = Router(
        settings,
        Tokenizer(model_dir),
        WorkerRegistry(model, settings.kv_hash),
        transport,
        build_profile(settings.profile),
        GlobalKVIndex(max_blocks=10_000),
        clock=time.monotonic if clock is None else clock,
    )
    return router, transport


def add_fake_worker(
    router: Router,
    transport: FakeTransport,
    worker_id: str,
    role: str = "unified",
    **behaviour: Any,
) -> FakeWorker:
    """Registers ``worker_id`` (address ``<id>:1``, the router's model and KV hashing) and
    gives it a `FakeWorker` with ``behaviour``."""
    kv = router.config.kv_hash
    info = pb.WorkerInfo(
        worker_id=worker_id, address=f"{worker_id}:1", model=router.config.model_name,
        role=role, max_model_len=router.config.max_model_len, max_num_seqs=8,
        kv_hash=pb.KVHashParams(
            block_size=kv.block_size, hash_seed=kv.hash_seed, algorithm=kv.algorithm
        ),
    )  # fmt: skip
    verdict = router.registry.register(info)
    if not verdict.accepted:
        raise ValueError(f"fake worker {worker_id!r} refused: {verdict.detail}")
    return transport.add(info.address, FakeWorker(**behaviour))
