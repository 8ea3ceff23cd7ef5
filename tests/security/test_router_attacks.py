"""The attacker against a real router and real workers, one test per class of issue 12.

Each test does what an outsider on the network could do — through the router's HTTP and gRPC
ports only — and checks the fleet is unharmed: no worker evicted or taken over, other
clients' requests served, nothing leaked between tenants.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from support.fleet import MODEL, WORKER, Fleet, fleet
from support.registry_calls import expect_every_registry_call_refused

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.router.fleet.registry import MAX_REFUSALS_KEPT, REFUSAL_REASONS
from mainsail.spec.engine_settings import EngineSettings
from mainsail.spec.kvhash import KVHashConfig

pytestmark = pytest.mark.security


def _info(worker_id: str, address: str, **fields: Any) -> pb.WorkerInfo:
    kv = KVHashConfig()
    info = pb.WorkerInfo(
        worker_id=worker_id,
        address=address,
        role="unified",
        model=MODEL,
        max_model_len=512,
        kv_hash=pb.KVHashParams(
            block_size=kv.block_size, hash_seed=kv.hash_seed, algorithm=kv.algorithm
        ),
    )
    for key, value in fields.items():
        setattr(info, key, value)
    return info


async def _generate(f: Fleet, request: pb.GenerateRequest, key: int = 0) -> list[Any]:
    async with grpc.aio.insecure_channel(f.grpc) as channel:
        stub = pb_grpc.InferenceStub(channel)
        return [r async for r in stub.Generate(request, metadata=f.metadata(key), timeout=60)]


def _good(text: str = "The harbour was full of sails", max_tokens: int = 4) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=MODEL,
        prompt=text,
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True),
    )


# ------------------------------------------------------------------ 1. the Registry is closed


async def test_the_registry_refuses_callers_without_the_worker_token(tiny_model_dir: Path) -> None:
    async with fleet(tiny_model_dir, workers=1) as f:
        before = {e.worker_id: e.address for e in f.router.registry.entries()}
        # The clients' gRPC port does not serve the Registry at all, token or not.
        async with grpc.aio.insecure_channel(f.grpc) as channel:
            for md in ((), WORKER.metadata):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await pb_grpc.RegistryStub(channel).Register(
                        _info("evil", "127.0.0.1:1"), metadata=md, timeout=5
                    )
                assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        async with grpc.aio.insecure_channel(f.fleet) as channel:
            registry = pb_grpc.RegistryStub(channel)
            await expect_every_registry_call_refused(
                channel, _info("evil", "127.0.0.1:1"), "w0",
                ((), f.metadata(0), (("authorization", f"Bearer {'x' * 43}"),)),
                grpc.StatusCode.UNAUTHENTICATED,
            )  # fmt: skip
            assert {e.worker_id: e.address for e in f.router.registry.entries()} == before
            assert f.router.registry.get("w0").load.running != 999  # type: ignore[union-attr]

            # A token holder still cannot take over a live worker's id from elsewhere.
            reply = await registry.Register(
                _info("w0", "127.0.0.1:9"), metadata=WORKER.metadata, timeout=5
            )
            assert not reply.accepted and reply.retry_after > 0
            assert "worker id in use" in reply.detail
            assert {e.worker_id: e.address for e in f.router.registry.entries()} == before
        # And the real worker keeps serving.
        responses = await _generate(f, _good())
        assert responses[-1].finish_reason == "length" and responses[-1].worker_id == "w0"


# ------------------------------------------------------------------ 2. one request, one error

BAD_SAMPLING = {
    "temperature": pb.SamplingParams(temperature=50.0),
    "top_p": pb.SamplingParams(top_p=0.0),
    "top_k": pb.SamplingParams(top_k=-3),
    "seed": pb.SamplingParams(seed=-1),
    "logprobs": pb.SamplingParams(logprobs=500),
    "max_tokens": pb.SamplingParams(max_tokens=-5),
    "stop": pb.SamplingParams(stop=["x"] * 40),
    "stop_token_ids": pb.SamplingParams(stop_token_ids=[10**6]),
}


async def test_invalid_requests_never_evict_workers_or_break_other_streams(
    tiny_model_dir: Path,
) -> None:
    # Few KV blocks: a long request passes every router check but the worker must refuse it
    # (capacity only the worker knows) — the case that used to evict the fleet.
    engine = EngineSettings(max_model_len=512, num_kv_blocks=8)
    async with fleet(tiny_model_dir, workers=2, engine=engine) as f:
        bad: list[tuple[str, pb.GenerateRequest]] = []
        for name, sampling in BAD_SAMPLING.items():
            bad.append((name, pb.GenerateRequest(model=MODEL, prompt="x", sampling=sampling)))
        bad.append(("prompt", pb.GenerateRequest(model=MODEL, prompt_token_ids=[10**6])))
        bad.append(("priority", pb.GenerateRequest(model=MODEL, prompt="x", priority=-4)))
        bad.append(
            ("request_id", pb.GenerateRequest(model=MODEL, prompt="x", request_id="r" * 999))
        )
        too_big = pb.GenerateRequest(
            model=MODEL,
            prompt_token_ids=list(range(5, 305)),
            sampling=pb.SamplingParams(max_tokens=100),
        )

        async def refused(name: str, request: pb.GenerateRequest) -> None:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _generate(f, request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, info.value)
            assert name in (info.value.details() or ""), (name, info.value.details())

        goods = [asyncio.create_task(_generate(f, _good(max_tokens=24))) for _ in range(4)]
        for _round in range(3):
            await asyncio.gather(*(refused(name, r) for name, r in bad))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _generate(f, too_big)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "KV blocks" in (info.value.details() or "")
        for done in await asyncio.gather(*goods):
            assert done[-1].finish_reason == "length"
            assert sum(len(r.token_ids) for r in done) == 24
        assert f.worker_ids() == {"w0", "w1"}
        assert f.router.metrics.failovers._value.get() == 0
        assert f.router.metrics.worker_refused._value.get() == 3
        # Over HTTP: out-of-range integers are 400 naming the field, never 500.
        async with httpx.AsyncClient(base_url=f.http, headers=f.key(), timeout=30) as http:
            for field, value in (
                ("max_tokens", 10**30),
                ("seed", 10**30),
                ("seed", -1),
                ("top_k", 10**12),
                ("priority", 10**20),
                ("logprobs", 10**9),
                ("temperature", "1e999"),
                ("top_p", "NaN"),
            ):
                body = f'{{"model": "{MODEL}", "prompt": "x", "{field}": {value}}}'
                resp = await http.post("/v1/completions", content=body.encode())
                assert resp.status_code == 400, (field, value, resp.text)
                assert resp.json()["error"]["param"] == field
            resp = await http.post("/v1/completions", json={"model": MODEL, "prompt": [2**40]})
            assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt"
        assert f.worker_ids() == {"w0", "w1"}


# ------------------------------------------------------------------ 3. request ids


async def test_request_ids_are_the_routers_and_a_colliding_client_id_harms_nobody(
    tiny_model_dir: Path,
) -> None:
    async with fleet(tiny_model_dir, workers=1) as f:
        same = [_good(max_tokens=16) for _ in range(4)]
        for request in same:
            request.request_id = "my-id"
        results = await asyncio.gather(*(_generate(f, r) for r in same))
        ids = set()
        for responses in results:
            assert responses[-1].finish_reason == "length"
            assert sum(len(r.token_ids) for r in responses) == 16
            assert {r.request_id for r in responses} == {responses[0].request_id}
            ids.add(responses[0].request_id)
        assert len(ids) == 4 and "my-id" not in ids
        assert all(i.startswith("req-") and len(i) >= 24 for i in ids)
        async with httpx.AsyncClient(base_url=f.http, headers=f.key(), timeout=30) as http:
            resp = await http.post(
                "/v1/completions",
                json={"model": MODEL, "prompt": "x", "max_tokens": 2},
                headers={"X-Request-Id": "client-label-1"},
            )
            assert resp.status_code == 200
            assert resp.headers["x-client-request-id"] == "client-label-1"
            assert resp.headers["x-request-id"].startswith("req-")
            assert resp.json()["id"].endswith(resp.headers["x-request-id"])
            # A label that is not short printable ASCII is refused, naming it.
            bad = await http.post(
                "/v1/completions",
                json={"model": MODEL, "prompt": "x"},
                headers={"X-Request-Id": "x" * 500},
            )
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "request_id"


# ------------------------------------------------------------------ 4. the request head


async def _raw(port: int, data: bytes, drip: float = 0.0, read_for: float = 10.0) -> bytes:
    """Send ``data`` (a byte every ``drip`` s when set, until the server answers); the
    answer's first bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if drip:
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                with contextlib.suppress(TimeoutError):
                    answer = await asyncio.wait_for(reader.read(4096), drip)
                    return answer
            return b""
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        with contextlib.suppress(ConnectionError):
            return await asyncio.wait_for(reader.read(4096), read_for)
        return b""
    finally:
        writer.close()


async def test_request_heads_are_bounded_in_size_time_and_connections(
    tiny_model_dir: Path,
) -> None:
    async with fleet(
        tiny_model_dir,
        workers=1,
        max_head_bytes=8192,
        header_timeout=1.0,
        body_timeout=1.0,
        max_connections=8,
    ) as f:
        port = f.router.http_port
        huge = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
        assert (await _raw(port, huge)).startswith(b"HTTP/1.1 431 ")
        long_url = b"GET /" + b"u" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        assert (await _raw(port, long_url)).startswith(b"HTTP/1.1 431 ")
        # Dripping headers: cut off by the header timeout (the drip would take 60 s).
        slow = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"
        assert (await _raw(port, slow, drip=0.3, read_for=20)).startswith(b"HTTP/1.1 408 ")
        # A body that never finishes: cut off by the body timeout.
        partial = (
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
            b'Authorization: Bearer sk-tenant-a\r\n\r\n{"model":'
        )
        assert (await _raw(port, partial, read_for=20)).startswith(b"HTTP/1.1 408 ")
        # Connections beyond the cap are answered 503 and closed; the held ones still work.
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]
        try:
            assert (await _raw(port, b"GET /health HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 503 ")
            reader, writer = held[0]
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200 ")
        finally:
            for _, writer in held:
                writer.close()
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=f.http, timeout=10) as http:
            assert (await http.get("/health")).status_code == 200
        assert f.worker_ids() == {"w0"}


# ------------------------------------------------------------------ 5. CPU work off the loop


async def test_a_huge_prompt_is_tokenized_off_the_event_loop(tiny_model_dir: Path) -> None:
    # The router's context is set far beyond the workers' so that the prompt must really be
    # tokenized (a shorter context refuses it from its length alone, see below).
    async with fleet(
        tiny_model_dir, workers=1, max_model_len=400_000, max_body_bytes=8 * 1024 * 1024
    ) as f:
        prompt = "the harbour sails at dawn, " * 60_000  # 1.6 MB: seconds of tokenizing
        finished: list[str] = []
        async with httpx.AsyncClient(base_url=f.http, headers=f.key(), timeout=120) as http:

            async def big() -> httpx.Response:
                body = {"model": MODEL, "prompt": prompt, "max_tokens": 1}
                resp = await http.post("/v1/completions", json=body)
                finished.append("big")
                return resp

            async def health() -> httpx.Response:
                while f.router.router.preparing.busy == 0:  # the big one is being tokenized
                    await asyncio.sleep(0.005)
                resp = await http.get("/health")
                finished.append("health")
                return resp

            big_resp, health_resp = await asyncio.gather(big(), health())
        assert health_resp.status_code == 200, health_resp.text
        assert finished == ["health", "big"]  # /health answered during the tokenization
        assert big_resp.status_code != 500
        assert f.worker_ids() == {"w0"}
    async with (
        fleet(tiny_model_dir, workers=1, max_body_bytes=8 * 1024 * 1024) as f,
        httpx.AsyncClient(base_url=f.http, headers=f.key(), timeout=120) as http,
    ):
        body = {"model": MODEL, "prompt": "sails " * 700_000}  # 4 MB, context 512
        resp = await http.post("/v1/completions", json=body)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt"
        assert f.router.router.preparing.busy == 0


# ------------------------------------------------------------------ 7. tenants and the cache


async def test_cached_prefixes_are_shared_inside_a_tenant_never_across(
    tiny_model_dir: Path,
) -> None:
    async with fleet(tiny_model_dir, workers=1) as f:
        prompt = pb.GenerateRequest(
            model=MODEL,
            prompt_token_ids=list(range(10, 74)),  # 4 full blocks
            sampling=pb.SamplingParams(max_tokens=1, temperature=0),
        )

        async def cached(key: int) -> int:
            return int((await _generate(f, prompt, key))[-1].usage.cached_tokens)

        assert await cached(0) == 0
        assert await cached(0) >= 48  # tenant A reuses its own prefix
        assert await cached(1) == 0  # tenant B learns nothing about A's prompt
        assert await cached(1) >= 48  # and reuses its own


# ------------------------------------------------------------------ 9. bounded structures


async def test_what_workers_send_cannot_grow_the_router(tiny_model_dir: Path) -> None:
    async with fleet(tiny_model_dir, workers=1) as f:
        async with grpc.aio.insecure_channel(f.fleet) as channel:
            registry = pb_grpc.RegistryStub(channel)
            md = WORKER.metadata
            for i in range(300):
                bad = _info(f"x{i}", "127.0.0.1:1", role=f"role-{i}", model=f"m-{i}" * 50)
                reply = await registry.Register(bad, metadata=md, timeout=5)
                assert not reply.accepted
            # Joining and leaving many times leaves no task or entry behind.
            for i in range(200):
                assert (
                    await registry.Register(_info(f"t{i}", "127.0.0.1:2"), metadata=md)
                ).accepted
                await registry.Deregister(pb.DeregisterRequest(worker_id=f"t{i}"), metadata=md)
        await asyncio.sleep(0.5)
        assert len(f.router.registry.refusals) <= MAX_REFUSALS_KEPT
        assert not f.router._removals
        assert f.worker_ids() == {"w0"}
        async with httpx.AsyncClient(base_url=f.http, timeout=10) as http:
            text = (await http.get("/metrics")).text
        reasons = {
            line.split('reason="', 1)[1].split('"', 1)[0]
            for line in text.splitlines()
            if line.startswith("mainsail_router_worker_refusals_total{")
        }
        assert reasons and reasons <= {*REFUSAL_REASONS, "unauthenticated"}
        roles = {
            line.split('role="', 1)[1].split('"', 1)[0]
            for line in text.splitlines()
            if line.startswith("mainsail_router_workers{")
        }
        assert roles <= {"unified", "prefill", "decode", "encode"}


def test_nothing_listens_beyond_loopback_in_this_tier() -> None:
    """The harness binds loopback only (the tests never reach another address)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        assert s.getsockname()[0] == "127.0.0.1"
