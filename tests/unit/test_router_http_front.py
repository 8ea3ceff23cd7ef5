"""The OpenAI HTTP front over the real request path, with fake workers (fast tier).

Real workers behind the same front are covered by tests/integration/test_local_stack.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.http import serving, sse_events

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.fleet.registry import WorkerRegistry
from mainsail.router.kvindex import GlobalKVIndex
from mainsail.router.routing.router import Router
from mainsail.router.scheduling import build_profile
from mainsail.router.settings import RouterConfig
from mainsail.router.testing import (
    FakeTransport,
    FakeWorker,
    add_fake_worker,
    held_at_router,
    settle,
)
from mainsail.spec.kvhash import KVHashConfig
from mainsail.spec.slo import SLO, SLOClass
from mainsail.spec.tokenizer import Tokenizer

pytestmark = pytest.mark.unit
MODEL = "tiny"


def make_router(
    model_dir: Path, clock: Callable[[], float] = time.monotonic, **overrides: Any
) -> tuple[Router, FakeTransport]:
    config = RouterConfig(
        model_name=MODEL,
        model_dir=model_dir,
        adapters=("sql",),
        max_model_len=256,
        slo=SLO(classes=[SLOClass(name="interactive", priority=10, ttft_ms=100)]),
        **overrides,
    )
    transport = FakeTransport()
    registry = WorkerRegistry(MODEL, config.kv_hash)
    router = Router(
        config,
        Tokenizer(model_dir),
        registry,
        transport,
        build_profile(config.profile),
        GlobalKVIndex(max_blocks=10_000),
        clock=clock,
    )
    return router, transport


def add_worker(router: Router, transport: FakeTransport, name: str, **behaviour: Any) -> FakeWorker:
    return add_fake_worker(router, transport, name, **behaviour)


@pytest.fixture
async def client(
    tiny_model_dir: Path,
) -> AsyncIterator[tuple[httpx.AsyncClient, Router, FakeTransport]]:
    router, transport = make_router(
        tiny_model_dir,
        dispatch_timeout=0.2,
        resume_timeout=0.2,
        max_body_bytes=2048,
        cold_start_timeout=0.2,
    )
    add_worker(router, transport, "w0")
    async with serving(router) as http:
        yield http, router, transport


async def test_models_lists_base_and_adapters(client: Any) -> None:
    http, _, _ = client
    body = (await http.get("/v1/models")).json()
    assert [m["id"] for m in body["data"]] == [MODEL, f"{MODEL}:sql"]


async def test_completion_fills_usage(client: Any) -> None:
    http, _, transport = client
    resp = await http.post(
        "/v1/completions", json={"model": MODEL, "prompt": "hello there", "max_tokens": 4}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == " t0 t1 t2 t3"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["prompt_tokens"] == len(
        transport.workers["w0:1"].submitted[0].prompt_token_ids
    )


async def test_streamed_completion_is_framed_as_sse(client: Any) -> None:
    http, _, _ = client
    resp = await http.post(
        "/v1/completions",
        json={
            "model": MODEL,
            "prompt": "hi",
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    texts = [e["choices"][0]["text"] for e in events[:-1] if e["choices"]]
    assert "".join(texts) == " t0 t1 t2"
    assert events[-2]["usage"]["completion_tokens"] == 3
    assert events[-3]["choices"][0]["finish_reason"] == "length"


async def test_streamed_chat_opens_with_assistant_role(client: Any) -> None:
    http, _, _ = client
    resp = await http.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            "stream": True,
        },
    )
    events = sse_events(resp.text)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[0]["object"] == "chat.completion.chunk"
    assert events[-2]["choices"][0]["finish_reason"] == "length"


async def test_chat_nonstream_and_adapter_and_slo_class(client: Any) -> None:
    http, _, transport = client
    resp = await http.post(
        "/v1/chat/completions",
        json={
            "model": f"{MODEL}:sql",
            "messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 2,
            "slo_class": "interactive",
        },
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"] == {"role": "assistant", "content": " t0 t1"}
    sent = transport.workers["w0:1"].submitted[-1]
    assert sent.adapter == "sql" and sent.priority == 10


@pytest.mark.parametrize(
    ("payload", "status", "param"),
    [
        ({"model": "nope", "prompt": "x"}, 404, "model"),
        ({"model": f"{MODEL}:nope", "prompt": "x"}, 404, "model"),
        ({"model": MODEL, "prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
        ({"model": MODEL, "prompt": "x", "max_tokens": 10_000}, 400, "max_tokens"),
        ({"model": MODEL, "prompt": ""}, 400, "prompt"),
        ({"model": MODEL}, 400, "prompt"),
        ({"model": MODEL, "prompt": [10**9]}, 400, "prompt"),
        ({"model": MODEL, "prompt": "x", "temperature": -1}, 400, "temperature"),
        ({"model": MODEL, "prompt": "x", "n": 3}, 400, "n"),
        ({"model": MODEL, "prompt": "x", "slo_class": "gold"}, 400, "slo_class"),
    ],
)
async def test_bad_completion_requests_get_openai_errors(
    client: Any, payload: dict[str, Any], status: int, param: str
) -> None:
    http, _, _ = client
    resp = await http.post("/v1/completions", json=payload)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param
    assert error["message"]
    # The router keeps serving after every refusal.
    ok = await http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    "messages", [[], [{"role": "user", "content": ""}], [{"role": "wizard", "content": "x"}]]
)
async def test_bad_chat_messages(client: Any, messages: list[Any]) -> None:
    http, _, _ = client
    resp = await http.post("/v1/chat/completions", json={"model": MODEL, "messages": messages})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"].startswith("messages")


async def test_malformed_json_and_oversized_body(client: Any) -> None:
    http, _, _ = client
    resp = await http.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400
    assert "not valid JSON" in resp.json()["error"]["message"]
    big = {"model": MODEL, "prompt": "x" * 5000}
    resp = await http.post("/v1/completions", json=big)
    assert resp.status_code == 413
    resp = await http.post("/v1/completions", content=b"[1, 2]")
    assert resp.status_code == 400


async def test_unknown_path_and_method(client: Any) -> None:
    http, _, _ = client
    assert (await http.get("/v1/nothing")).json()["error"]["code"] == "unknown_url"
    assert (await http.get("/v1/completions")).status_code == 405


async def test_no_worker_holds_then_503_naming_the_reason(tiny_model_dir: Path) -> None:
    """Scale to zero: the router stays Ready with no worker, holds a request for
    `cold_start_timeout` (exported as queued demand), then answers 503 saying why."""
    now = [100.0]
    router, _ = make_router(
        tiny_model_dir, clock=lambda: now[0], dispatch_timeout=0.1, cold_start_timeout=0.6
    )
    async with serving(router) as h:
        health = await h.get("/health")
        assert health.status_code == 200 and health.json() == {"status": "ok", "workers": 0}
        pending = asyncio.ensure_future(
            h.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
        )
        await held_at_router(router)
        metrics = (await h.get("/metrics")).text
        assert "mainsail_router_queued_requests 1.0" in metrics
        now[0] = 100.5  # past dispatch_timeout, inside the cold-start hold
        router.notify()
        await settle()
        assert router.chooser.waiting == 1
        now[0] = 100.6
        router.notify()
        resp = await pending
    assert resp.status_code == 503
    error = resp.json()["error"]
    assert error["code"] == "no_worker_available"
    assert "No worker is registered" in error["message"] and "scaled to zero" in error["message"]


async def test_a_held_request_is_served_by_the_first_worker_to_register(
    tiny_model_dir: Path,
) -> None:
    now = [100.0]
    router, transport = make_router(
        tiny_model_dir, clock=lambda: now[0], dispatch_timeout=0.1, cold_start_timeout=5
    )
    async with serving(router) as h:
        pending = asyncio.ensure_future(
            h.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
        )
        await held_at_router(router)
        now[0] = 100.3  # past dispatch_timeout: only the cold hold keeps it
        router.notify()
        await settle()
        assert router.chooser.waiting == 1 and not pending.done()
        add_fake_worker(router, transport, "w-late")
        router.notify()  # as the Registry service does on registration
        resp = await pending
    assert resp.status_code == 200, resp.text


async def test_worker_down_before_first_token_fails_over(client: Any) -> None:
    http, router, transport = client
    transport.workers["w0:1"].fail_before_first = True
    add_worker(router, transport, "w1")
    # w1 looks busier, so the scheduler tries the broken w0 first.
    router.registry.heartbeat("w1", pb.LoadSnapshot(running=6, waiting=6, max_num_seqs=8))
    resp = await http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
    assert resp.status_code == 200
    assert len(transport.workers["w0:1"].submitted) == 1
    assert router.registry.get("w0") is None  # dropped until it registers again
    assert len(transport.workers["w1:1"].submitted) == 1


async def test_metrics_count_requests(client: Any) -> None:
    http, _, _ = client
    await http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1})
    text = (await http.get("/metrics")).text
    assert 'mainsail_router_requests_total{front="any",outcome="ok"} 1.0' in text
    assert "mainsail_router_ttft_seconds_bucket" in text


def test_registry_refuses_mismatched_kv_hash(tiny_model_dir: Path) -> None:
    router, _ = make_router(tiny_model_dir)
    other = KVHashConfig(block_size=32)
    info = pb.WorkerInfo(
        worker_id="x",
        address="x:1",
        model=MODEL,
        kv_hash=pb.KVHashParams(block_size=other.block_size, algorithm=other.algorithm),
    )
    verdict = router.registry.register(info)
    assert not verdict.accepted
    assert "KV hash mismatch" in verdict.detail and "b32" in verdict.detail
    assert len(router.registry) == 0


async def test_workers_without_kv_events_get_approximate_prefix_affinity(
    tiny_model_dir: Path,
) -> None:
    from mainsail.router.kvindex import ApproximateIndex

    router, transport = make_router(tiny_model_dir)
    router.chooser.approx = ApproximateIndex(max_blocks=1000)
    router.chooser.publishes_events = lambda worker_id: False
    for name in ("a", "b", "c"):
        add_worker(router, transport, name)
    prompt = "a shared system prompt that spans several KV blocks " * 6
    async with serving(router) as h:
        first = await h.post("/v1/completions", json={"model": MODEL, "prompt": prompt})
        again = [
            await h.post("/v1/completions", json={"model": MODEL, "prompt": prompt + f" {i}"})
            for i in range(4)
        ]
        metrics = (await h.get("/metrics")).text
    chosen = first.headers["x-mainsail-worker"]
    assert all(r.headers["x-mainsail-worker"] == chosen for r in again)
    assert 'mainsail_router_index_hit_blocks_total{mode="approximate"}' in metrics


@pytest.mark.parametrize("stream", [False, True])
async def test_worker_is_released_when_the_first_chunk_finishes(client: Any, stream: bool) -> None:
    http, router, _ = client
    for max_tokens in (1, 3):
        resp = await http.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": "x", "max_tokens": max_tokens, "stream": stream},
        )
        assert resp.status_code == 200
    entry = router.registry.get("w0")
    assert entry is not None and entry.outstanding == 0
