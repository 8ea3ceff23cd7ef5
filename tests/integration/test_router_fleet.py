"""Active-active router replicas with real workers (tiny checkpoint, real engine, gRPC).

Every worker registers with every replica; each replica serves, keeps its own KV index from
the workers' events and sees the other replicas' requests in the workers' load; a drain asked
through one replica is heard by all, and the replica holding a stream is the one that moves
it; killing a replica under load ends only its own streams.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.router_fleet import ADMIN, HEADERS, MODEL, RouterFleet, complete, router_fleet

from mainsail.router.fleet.load_merge import merged_in_flight
from mainsail.router.server import RouterServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
PROMPT = [5, 17, 42, 99, 123, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]


async def until(check: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Wait (bounded) for ``check()`` to hold; the fleet's state changes with heartbeats."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        await asyncio.sleep(0.05)


async def stream_tokens(
    http: httpx.AsyncClient, base: str, max_tokens: int, started: asyncio.Event | None = None
) -> int:
    """Stream one greedy completion; its completion tokens by the final usage (raises if the
    stream breaks or ends without finishing)."""
    body = {
        "model": MODEL,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    tokens = 0
    finish = None
    async with http.stream("POST", f"{base}/v1/completions", json=body, headers=HEADERS) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices", []):
                if choice.get("text") and started is not None:
                    started.set()
                finish = choice.get("finish_reason") or finish
    if finish not in ("length", "stop"):
        raise RuntimeError(f"stream ended without a finish reason ({finish})")
    return tokens


def ids(router: RouterServer) -> set[str]:
    return {e.worker_id for e in router.registry.entries()}


def moved(router: RouterServer) -> float:
    """Streams the replica moved to another worker (`mainsail_router_migrations_total`)."""
    text = router.router.metrics.render().decode()
    (family,) = [
        f for f in text_string_to_metric_families(text) if f.name == "mainsail_router_migrations"
    ]
    return sum(s.value for s in family.samples if s.name.endswith("_total"))


async def test_every_replica_serves_and_follows_replicas_coming_and_going(
    tiny_model_dir: Path,
) -> None:
    async with router_fleet(tiny_model_dir, routers=2, workers=2) as fleet:
        third = await fleet.add_router()  # found through discovery, not configured
        await until(lambda: ids(third) == {"w0", "w1"}, what="workers registered with replica 3")
        async with httpx.AsyncClient(timeout=60) as http:
            answers = [await complete(http, fleet.http(i), PROMPT, 8) for i in range(3)]
        texts = {a["choices"][0]["text"] for a in answers}
        assert len(texts) == 1 and answers[0]["usage"]["completion_tokens"] == 8
        for router in fleet.routers:
            assert ids(router) == {"w0", "w1"}
            assert router.metrics.requests.labels("http", "ok")._value.get() >= 1
        # Each replica has its own KV index, fed by the workers' events.
        await until(
            lambda: all(r.index.stats().entries > 0 for r in fleet.routers),
            what="every replica's KV index filled",
        )
        gone = fleet.routers[0]
        await fleet.kill_router(gone)
        for host in fleet.workers:
            assert host.registrar is not None
            await until(
                lambda h=host: fleet.fleet_address(gone) not in h.registrar.sessions,  # type: ignore[union-attr]
                what="session to the removed replica stopped",
            )
            assert len(host.registrar.registered_with()) == 2


async def test_each_replica_sees_the_others_requests_without_double_counting(
    tiny_model_dir: Path,
) -> None:
    async with router_fleet(tiny_model_dir, routers=2, workers=1) as fleet:
        a, b = fleet.routers
        async with httpx.AsyncClient(timeout=120) as http:
            started = [asyncio.Event() for _ in range(3)]
            streams = [
                asyncio.create_task(stream_tokens(http, fleet.http(0), 400, started[i]))
                for i in range(3)
            ]
            try:
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 60)
                entry_a, entry_b = a.registry.get("w0"), b.registry.get("w0")
                assert entry_a is not None and entry_b is not None
                # B dispatched nothing but sees A's 3 requests from the worker's report.
                await until(lambda: entry_b.others == 3, what="replica B sees 3 requests")
                assert merged_in_flight(entry_b.outstanding, entry_b.others) == 3
                # A sees its own 3 once: live count, nothing added from the report.
                await until(lambda: entry_a.load.router_id == a.registry.router_id)
                assert entry_a.outstanding == 3 and entry_a.others == 0
                assert merged_in_flight(entry_a.outstanding, entry_a.others) == 3
            finally:
                for task in streams:
                    task.cancel()
                await asyncio.gather(*streams, return_exceptions=True)


async def test_a_drain_through_one_replica_is_a_drain_for_all(tiny_model_dir: Path) -> None:
    async with router_fleet(tiny_model_dir, routers=2, workers=2) as fleet:
        a, b = fleet.routers
        async with httpx.AsyncClient(timeout=120) as http:
            # A stream on replica B, on whichever worker B picked.
            started = asyncio.Event()
            on_b = asyncio.create_task(stream_tokens(http, fleet.http(1), 300, started))
            await asyncio.wait_for(started.wait(), 60)
            (busy,) = [e.worker_id for e in b.registry.entries() if e.outstanding]
            reply = await http.post(f"{fleet.http(0)}/workers/{busy}/drain", headers=ADMIN)
            assert reply.status_code == 200 and reply.json()["draining"] is True
            worker = next(h for h in fleet.workers if h.spec.worker_id == busy)
            assert worker.service is not None and worker.service.draining
            await until(lambda: b.registry.get(busy).draining, what="replica B hears the drain")  # type: ignore[union-attr]
            # B moved its own stream off the drained worker; the client saw nothing.
            assert await asyncio.wait_for(on_b, 120) == 300
            # The move was B's (the replica holding the stream), not A's, which was asked.
            assert moved(b) >= 1 and moved(a) == 0
            await until(lambda: b.registry.get(busy).outstanding == 0)  # type: ignore[union-attr]
            # New requests on either replica go to the other worker only.
            before = worker.service.in_flight_from(b.registry.router_id)
            for i in (0, 1, 0, 1):
                await complete(http, fleet.http(i), [*PROMPT, i], 2)
            served = {
                h.spec.worker_id: h.engine.metrics().num_requests_finished  # type: ignore[union-attr]
                for h in fleet.workers
            }
            assert before == 0
            other = next(w for w in served if w != busy)
            assert served[other] >= 4
            # Undrain through the other replica: both hear it.
            reply = await http.delete(f"{fleet.http(1)}/workers/{busy}/drain", headers=ADMIN)
            assert reply.status_code == 200
            await until(lambda: not a.registry.get(busy).draining, what="A hears the undrain")  # type: ignore[union-attr]


async def test_killing_a_replica_under_load_ends_only_its_own_streams(
    tiny_model_dir: Path,
) -> None:
    async with router_fleet(tiny_model_dir, routers=2, workers=2) as fleet:
        doomed, survivor = fleet.routers
        base_doomed, base_survivor = fleet.http(0), fleet.http(1)
        async with httpx.AsyncClient(timeout=120) as http:
            started = [asyncio.Event() for _ in range(6)]
            streams = [
                asyncio.create_task(
                    stream_tokens(http, base_doomed if i < 3 else base_survivor, 200, started[i])
                )
                for i in range(6)
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 90)
            await fleet.kill_router(doomed)
            t0 = time.monotonic()
            fresh = await complete(http, base_survivor, PROMPT, 4)  # at once, no retry
            first_after_kill = time.monotonic() - t0
            results = await asyncio.gather(*streams, return_exceptions=True)
        assert fresh["usage"]["completion_tokens"] == 4
        assert all(isinstance(r, Exception) for r in results[:3]), results[:3]
        assert results[3:] == [200, 200, 200]
        assert first_after_kill < 30  # bounded; figures are in bench/router_fleet.py
        # The workers dropped the dead replica's requests: the survivor's view of the
        # others' load falls to zero, and both workers still serve it.
        await until(
            lambda: all(e.others == 0 for e in survivor.registry.entries()),
            what="dead replica's requests gone from the workers",
        )
        assert ids(survivor) == {"w0", "w1"}


async def _hit_rate(fleet: RouterFleet, replicas: int) -> float:
    """Cached / prompt tokens over a fixed workload sent round-robin over ``replicas``."""
    groups = [[(g * 37 + i) % 480 + 3 for i in range(96)] for g in range(4)]
    requests = [[*groups[r % 4], *range(200 + r, 216 + r)] for r in range(40)]
    cached = prompt = 0
    queue = list(enumerate(requests))
    async with httpx.AsyncClient(timeout=120) as http:

        async def client() -> None:
            nonlocal cached, prompt
            while queue:
                i, ids_ = queue.pop(0)
                body = await complete(http, fleet.http(i % replicas), ids_, 2)
                usage = body["usage"]
                cached += usage["prompt_tokens_details"]["cached_tokens"]
                prompt += usage["prompt_tokens"]

        await asyncio.gather(client(), client())
    return cached / prompt


async def test_cache_affinity_holds_across_replicas(tiny_model_dir: Path) -> None:
    async with router_fleet(tiny_model_dir, routers=1, workers=2) as one:
        single = await _hit_rate(one, 1)
    async with router_fleet(tiny_model_dir, routers=3, workers=2) as three:
        spread = await _hit_rate(three, 3)
    assert single > 0.5, single  # the workload reuses prefixes: affinity matters here
    assert spread >= single * 0.9, (single, spread)
