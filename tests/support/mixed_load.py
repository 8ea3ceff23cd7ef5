"""A bounded mixed load against a router: valid requests with a fraction of malformed ones.

Shared by the CI-sized test (`tests/security/test_mixed_load.py`) and the 10-minute benchmark
(`bench/malformed_mix.py`). Valid requests go over HTTP (streamed and whole) and gRPC; the
malformed ones are the kinds an attacker or a buggy client sends (bad JSON, out-of-range
numbers, unknown fields' values the worker would refuse, wrong keys, oversized heads). What
counts: every valid request succeeds, and no malformed one gets a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import httpx

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc

WORDS = [
    "harbour",
    "sail",
    "wind",
    "tide",
    "rope",
    "mast",
    "deck",
    "keel",
    "anchor",
    "gull",
    "wave",
    "salt",
]


@dataclass
class MixResult:
    """What happened: counts per kind, and the failures that matter."""

    sent: Counter[str] = field(default_factory=Counter)
    valid_ok: int = 0
    valid_failures: list[str] = field(default_factory=list)
    malformed_server_errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # valid requests, seconds
    seconds: float = 0.0


@dataclass(frozen=True)
class Target:
    http: str  # http://host:port
    grpc: str  # host:port
    model: str
    key: str  # a client API key ("" when the router is open)


def _prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 24)))


async def _valid(kind: str, t: Target, http: httpx.AsyncClient, rng: random.Random) -> str:
    """'' on success, else what went wrong."""
    max_tokens = rng.randint(2, 8)
    if kind == "grpc":
        request = pb.GenerateRequest(
            model=t.model,
            prompt=_prompt(rng),
            sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=rng.random()),
        )
        metadata = (("authorization", f"Bearer {t.key}"),) if t.key else ()
        async with grpc.aio.insecure_channel(t.grpc) as channel:
            try:
                responses = [
                    r
                    async for r in pb_grpc.InferenceStub(channel).Generate(
                        request, metadata=metadata, timeout=60
                    )
                ]
            except grpc.aio.AioRpcError as exc:
                return f"grpc {exc.code().name}: {exc.details()}"
        if not responses or responses[-1].finish_reason not in ("stop", "length"):
            return f"grpc finish {responses[-1].finish_reason if responses else None}"
        return ""
    body = {"model": t.model, "prompt": _prompt(rng), "max_tokens": max_tokens}
    if kind == "http-stream":
        body["stream"] = True
        async with http.stream("POST", "/v1/completions", json=body) as resp:
            text = (await resp.aread()).decode()
        if resp.status_code != 200 or "data: [DONE]" not in text or '"error"' in text:
            return f"http-stream {resp.status_code}: {text[-200:]}"
        return ""
    resp = await http.post("/v1/completions", json=body)
    if resp.status_code != 200 or not resp.json().get("choices"):
        return f"http {resp.status_code}: {resp.text[:200]}"
    return ""


MALFORMED_KINDS = (
    "bad-json", "huge-int", "nan", "unknown-model", "no-prompt", "worker-refusal-grpc",
    "stop-flood-grpc", "token-out-of-vocab", "wrong-key", "huge-header", "huge-label",
)  # fmt: skip


async def _malformed(kind: str, t: Target, http: httpx.AsyncClient) -> int:
    """Sends one malformed request; its status (HTTP, or 400 for gRPC client errors and 500
    for gRPC server errors)."""
    m = t.model
    if kind.endswith("-grpc"):
        sampling = (
            pb.SamplingParams(temperature=50.0, seed=-1)
            if kind == "worker-refusal-grpc"
            else pb.SamplingParams(stop=["x"] * 40)
        )
        metadata = (("authorization", f"Bearer {t.key}"),) if t.key else ()
        async with grpc.aio.insecure_channel(t.grpc) as channel:
            try:
                async for _ in pb_grpc.InferenceStub(channel).Generate(
                    pb.GenerateRequest(model=m, prompt="x", sampling=sampling),
                    metadata=metadata,
                    timeout=30,
                ):
                    pass
            except grpc.aio.AioRpcError as exc:
                server_side = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
                return 500 if exc.code() in server_side else 400
        return 200
    if kind == "huge-header":
        reader, writer = await asyncio.open_connection(*t.http.removeprefix("http://").split(":"))
        try:
            writer.write(b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            head = await asyncio.wait_for(reader.read(64), 10)
        finally:
            writer.close()
        return int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else 400
    bodies: dict[str, bytes] = {
        "bad-json": b'{"model": "' + m.encode() + b'", "prompt": ',
        "huge-int": json.dumps({"model": m, "prompt": "x", "max_tokens": 10**30}).encode(),
        "nan": b'{"model": "' + m.encode() + b'", "prompt": "x", "temperature": NaN}',
        "unknown-model": json.dumps({"model": "nope", "prompt": "x"}).encode(),
        "no-prompt": json.dumps({"model": m}).encode(),
        "token-out-of-vocab": json.dumps({"model": m, "prompt": [10**7]}).encode(),
        "wrong-key": json.dumps({"model": m, "prompt": "x"}).encode(),
        "huge-label": json.dumps({"model": m, "prompt": "x"}).encode(),
    }
    headers = {}
    if kind == "wrong-key":
        headers["Authorization"] = "Bearer not-a-key"
    if kind == "huge-label":
        headers["X-Request-Id"] = "r" * 1000
    resp = await http.post("/v1/completions", content=bodies[kind], headers=headers)
    return resp.status_code


async def run_mix(
    target: Target,
    *,
    duration_s: float,
    max_requests: int,
    concurrency: int = 8,
    malformed_fraction: float = 0.05,
    seed: int = 0,
    on_tick: Callable[[MixResult], Awaitable[None]] | None = None,
) -> MixResult:
    """Runs until ``duration_s`` passed or ``max_requests`` were sent (both bound it)."""
    result = MixResult()
    rng = random.Random(seed)
    deadline = time.monotonic() + duration_s
    budget = iter(range(max_requests))
    headers = {"Authorization": f"Bearer {target.key}"} if target.key else {}
    started = time.monotonic()

    async def client(http: httpx.AsyncClient, my_rng: random.Random) -> None:
        for _ in budget:
            if time.monotonic() > deadline:
                return
            if my_rng.random() < malformed_fraction:
                kind = my_rng.choice(MALFORMED_KINDS)
                result.sent[kind] += 1
                status = await _malformed(kind, target, http)
                if status >= 500:
                    result.malformed_server_errors.append(f"{kind}: {status}")
                continue
            kind = my_rng.choice(("http", "http-stream", "grpc"))
            result.sent[kind] += 1
            t0 = time.monotonic()
            failure = await _valid(kind, target, http, my_rng)
            if failure:
                result.valid_failures.append(failure)
            else:
                result.valid_ok += 1
                result.latencies.append(time.monotonic() - t0)
            if on_tick is not None and result.valid_ok % 100 == 0:
                await on_tick(result)

    async with httpx.AsyncClient(
        base_url=target.http, headers=headers, timeout=60,
        limits=httpx.Limits(max_connections=concurrency * 2),
    ) as http:  # fmt: skip
        seeds = [rng.randrange(2**32) for _ in range(concurrency)]
        await asyncio.gather(*(client(http, random.Random(s)) for s in seeds))
    result.seconds = time.monotonic() - started
    return result
