"""Moving streaming requests between workers over the real HTTP front, with fake workers:
after a worker fails mid-stream, on `POST /workers/<id>/drain`, and on `POST
/requests/<id>/migrate` (real workers: tests/e2e/test_local_stack.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.http import serving, sse_events

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.front.auth import Credentials
from mainsail.router.routing.router import Router
from mainsail.router.testing import (
    FakeTransport,
    ManualClock,
    add_fake_worker,
    fake_router,
    held_at_router,
    settle,
)
from mainsail.spec import sse

pytestmark = pytest.mark.unit
MODEL = "tiny"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def client(
    tiny_model_dir: Path, clock: ManualClock
) -> AsyncIterator[tuple[httpx.AsyncClient, Router, FakeTransport]]:
    router, transport = fake_router(
        tiny_model_dir,
        MODEL,
        clock=clock,
        dispatch_timeout=0.2,
        resume_timeout=0.2,
        max_body_bytes=2048,
        cold_start_timeout=0.2,
    )
    add_fake_worker(router, transport, "w0")
    # The admin API needs the router's token (a router without one refuses it).
    async with serving(router, Credentials(admin_token="root")) as http:
        http.headers["Authorization"] = "Bearer root"  # /v1 is open: no client keys
        yield http, router, transport


async def test_worker_dying_mid_stream_with_no_other_worker_ends_with_error_event(
    client: Any, clock: ManualClock
) -> None:
    """Each of `max_resumes` moves waits `resume_timeout` for a worker, then the stream ends
    with an error; a new request is held `cold_start_timeout`, then 503 (timeouts fired on
    the router's clock, not waited out)."""
    http, router, transport = client
    transport.workers["w0:1"].fail_after = 2
    pending = asyncio.ensure_future(
        http.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": "x", "max_tokens": 5, "stream": True},
        )
    )
    for _ in range(router.config.max_resumes):  # each move looks for another worker
        await held_at_router(router)
        assert not pending.done()
        clock.advance(0.2)  # resume_timeout
        router.notify()
        await settle()  # the timed-out move gives up before the next one starts waiting
    events = sse_events((await pending).text)
    assert events[-1] == "[DONE]"
    assert "worker died" in events[-2]["error"]["message"]
    pending = asyncio.ensure_future(
        http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 5})
    )
    await held_at_router(router)  # no worker left: held for a cold start
    clock.advance(0.2)  # cold_start_timeout
    router.notify()
    assert (await pending).status_code == 503


async def test_worker_dying_mid_stream_moves_the_request_to_another_worker(client: Any) -> None:
    """Live migration: the stream carries on from w1, which continues from the tokens sent."""
    http, router, transport = client
    transport.workers["w0:1"].fail_after = 2
    router.registry.heartbeat("w0", pb.LoadSnapshot(max_num_seqs=8))
    add_fake_worker(router, transport, "w1")
    router.registry.heartbeat("w1", pb.LoadSnapshot(running=6, waiting=6, max_num_seqs=8))
    resp = await http.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "x y", "max_tokens": 5, "stream": True,
              "stream_options": {"include_usage": True}},
    )  # fmt: skip
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["text"] for e in events[:-1] if e.get("choices"))
    assert text == " t0 t1 t0 t1 t2"  # two from w0, then w1's first three
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    (original,) = transport.workers["w0:1"].submitted
    (moved,) = transport.workers["w1:1"].submitted
    streamed = [(original.prompt_token_ids[-1] + i) % 97 + 3 for i in range(2)]
    assert list(moved.prompt_token_ids) == [*original.prompt_token_ids, *streamed]
    assert moved.sampling.max_tokens == 3 and moved.request_id == original.request_id
    assert moved.sampled_before == 2 and original.sampled_before == 0
    usage = events[-2]["usage"]
    assert usage["prompt_tokens"] == len(original.prompt_token_ids)
    assert usage["completion_tokens"] == 5
    assert router.registry.get("w0") is None
    assert "mainsail_router_resumes_total 1.0" in (await http.get("/metrics")).text


async def _stream_and(
    http: httpx.AsyncClient, after: int, action: Any, max_tokens: int = 12
) -> tuple[list[Any], Any]:
    """Streams a completion; after ``after`` token events runs ``action(request_id)``."""
    events: list[Any] = []
    result = None
    body = {"model": MODEL, "prompt": "x y", "max_tokens": max_tokens, "stream": True}
    async with http.stream("POST", "/v1/completions", json=body) as resp:
        request_id = resp.headers["x-request-id"]
        async for payload in sse.events(resp.aiter_lines()):
            events.append(payload)
            if len(events) == after:
                result = await action(request_id)
    return events, result


async def test_draining_a_worker_moves_its_streams_and_stops_new_work(client: Any) -> None:
    http, router, transport = client
    transport.workers["w0:1"].pause_after = 3
    router.registry.heartbeat("w0", pb.LoadSnapshot(max_num_seqs=8))
    add_fake_worker(router, transport, "w1")
    router.registry.heartbeat("w1", pb.LoadSnapshot(running=6, waiting=6, max_num_seqs=8))

    async def drain(request_id: str) -> Any:
        return (await http.post("/workers/w0/drain")).json()

    events, reply = await _stream_and(http, 3, drain)
    assert reply == {"worker": "w0", "draining": True, "migrated": 1}
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["text"] for e in events[:-1] if e.get("choices"))
    assert text.split() == ["t0", "t1", "t2", *[f"t{i}" for i in range(9)]]
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert len(transport.workers["w0:1"].aborted) == 1
    (moved,) = transport.workers["w1:1"].submitted
    assert moved.sampling.max_tokens == 9
    listed = {w["id"]: w for w in (await http.get("/workers")).json()["data"]}
    assert listed["w0"]["draining"] and not listed["w1"]["draining"]
    # w0 is idle and w1 looks busy, yet new work goes to w1 while w0 drains ...
    await http.post("/v1/completions", json={"model": MODEL, "prompt": "z", "max_tokens": 1})
    assert len(transport.workers["w0:1"].submitted) == 1
    assert len(transport.workers["w1:1"].submitted) == 2
    # ... and back to w0 once the drain is lifted.
    assert (await http.delete("/workers/w0/drain")).json()["draining"] is False
    await http.post("/v1/completions", json={"model": MODEL, "prompt": "z", "max_tokens": 1})
    assert len(transport.workers["w0:1"].submitted) == 2
    text = (await http.get("/metrics")).text
    assert "mainsail_router_migrations_total 1.0" in text
    assert "mainsail_router_resumes_total 0.0" in text


async def test_migrating_one_request_to_a_named_worker(client: Any) -> None:
    http, router, transport = client
    transport.workers["w0:1"].pause_after = 2
    router.registry.heartbeat("w0", pb.LoadSnapshot(max_num_seqs=8))
    add_fake_worker(router, transport, "w1")
    add_fake_worker(router, transport, "w2")
    for name in ("w1", "w2"):
        router.registry.heartbeat(name, pb.LoadSnapshot(running=6, waiting=6, max_num_seqs=8))

    async def migrate(request_id: str) -> Any:
        unknown = await http.post("/requests/nope/migrate")
        bad = await http.post(f"/requests/{request_id}/migrate", json={"worker": 3})
        ghost = await http.post(f"/requests/{request_id}/migrate", json={"worker": "w9"})
        ok = await http.post(f"/requests/{request_id}/migrate", json={"worker": "w2"})
        return [unknown.status_code, bad.status_code, ghost.status_code, ok.json()]

    events, replies = await _stream_and(http, 2, migrate, max_tokens=6)
    assert replies[:3] == [404, 400, 404]
    assert replies[3]["migrating"] and replies[3]["worker"] == "w2"
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
    assert transport.workers["w1:1"].submitted == []
    (moved,) = transport.workers["w2:1"].submitted
    assert moved.sampling.max_tokens == 4
    unknown_worker = await http.post("/workers/w9/drain")
    assert unknown_worker.status_code == 404
    assert "w9" in unknown_worker.json()["error"]["message"]
