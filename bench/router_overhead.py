"""Router overhead: added latency and throughput of the router in front of a worker.

Setup (all on loopback, each part its own process): one worker serving `FakeEngine` (tokens
are instant, so the model's compute is out of the picture) through the real Worker gRPC
service, and one router process, sharing a worker token generated for the run. Measured in the
same run:

- direct: gRPC `Worker.Submit` straight to the worker, with the token (the baseline);
- router gRPC: `Inference.Generate` through the router;
- router HTTP: `/v1/completions` with `stream: true` (SSE) through the router.

For each path: time to first token and end-to-end latency p50/p99 over sequential streamed
requests, then requests/s with 64 concurrent streaming clients. Every figure is the median
over `--repeats` runs. Usage: `python bench/router_overhead.py [--requests 200] [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import httpx

from mainsail.cli.local.redis_server import free_port
from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.router.settings import RouterConfig
from mainsail.spec import sse
from mainsail.spec.worker_auth import WORKER_TOKEN_ENV, WorkerCredential
from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.worker_spec import WorkerSpec

MAX_TOKENS = 16
PROMPT = "The quick brown fox jumps over the lazy dog. " * 4

Timing = tuple[float, float]  # (ttft, e2e) seconds
WORKER = WorkerCredential(token=secrets.token_hex(32))  # the router's and the worker's


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _direct(stub: pb_grpc.WorkerStub, token_ids: list[int], i: int) -> Timing:
    t0 = time.perf_counter()
    ttft = 0.0
    req = pb.WorkerRequest(
        request_id=f"d{i}-{t0}",
        prompt_token_ids=token_ids,
        sampling=pb.SamplingParams(max_tokens=MAX_TOKENS),
    )
    async for _ in stub.Submit(req, metadata=WORKER.metadata):
        if not ttft:
            ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0


async def _via_grpc(stub: pb_grpc.InferenceStub, model: str, i: int) -> Timing:
    t0 = time.perf_counter()
    ttft = 0.0
    req = pb.GenerateRequest(
        model=model, prompt=PROMPT, sampling=pb.SamplingParams(max_tokens=MAX_TOKENS)
    )
    async for _ in stub.Generate(req):
        if not ttft:
            ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0


async def _via_http(client: httpx.AsyncClient, model: str, i: int) -> Timing:
    t0 = time.perf_counter()
    ttft = 0.0
    body = {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "stream": True}
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        async for _event in sse.json_events(resp.aiter_lines()):
            if not ttft:
                ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0


async def _sequential(call: Callable[[int], Awaitable[Timing]], n: int) -> list[Timing]:
    for i in range(10):  # warm-up
        await call(-i - 1)
    return [await call(i) for i in range(n)]


async def _concurrent(call: Callable[[int], Awaitable[Timing]], clients: int, n: int) -> float:
    counter = iter(range(n))

    async def client() -> None:
        for i in counter:
            await call(i)

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), timeout=300)
    return n / (time.perf_counter() - t0)


async def _measure(
    worker_addr: str,
    router_grpc: str,
    router_http: str,
    model: str,
    token_ids: list[int],
    requests: int,
    clients: int,
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    async with (
        grpc.aio.insecure_channel(worker_addr) as wch,
        grpc.aio.insecure_channel(router_grpc) as rch,
        httpx.AsyncClient(
            base_url=router_http, timeout=60, limits=httpx.Limits(max_connections=clients)
        ) as http,
    ):
        worker, inference = pb_grpc.WorkerStub(wch), pb_grpc.InferenceStub(rch)
        paths: dict[str, Callable[[int], Awaitable[Timing]]] = {
            "direct gRPC (baseline)": lambda i: _direct(worker, token_ids, i),
            "router gRPC": lambda i: _via_grpc(inference, model, i),
            "router HTTP SSE": lambda i: _via_http(http, model, i),
        }
        for name, call in paths.items():
            timings = await _sequential(call, requests)
            ttfts, e2es = [t for t, _ in timings], [e for _, e in timings]
            rps = await _concurrent(call, clients, requests * 2)
            out[name] = {
                "ttft_p50_ms": 1000 * _pct(ttfts, 0.5),
                "ttft_p99_ms": 1000 * _pct(ttfts, 0.99),
                "e2e_p50_ms": 1000 * _pct(e2es, 0.5),
                "e2e_p99_ms": 1000 * _pct(e2es, 0.99),
                "rps": rps,
            }
    return out


def _wait_file(path: Path, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args()

    model_dir = ensure_checkpoint("llama")
    tmp = Path(tempfile.mkdtemp(prefix="mainsail-bench-"))
    config = RouterConfig(
        model_name="bench",
        model_dir=model_dir,
        http_port=0,
        grpc_port=0,
        fleet_port=0,
        max_model_len=1024,
    )
    (tmp / "router.json").write_text(config.model_dump_json())
    env = {**os.environ, WORKER_TOKEN_ENV: str(WORKER.token)}
    router = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mainsail.router",
            "--config",
            str(tmp / "router.json"),
            "--ready-file",
            str(tmp / "ready"),
            "--log-level",
            "WARNING",
        ],
        env=env,
    )
    procs = [router]
    try:
        _wait_file(tmp / "ready", router, "router")
        ports = json.loads((tmp / "ready").read_text())
        worker_port = free_port()
        spec = WorkerSpec(
            worker_id="fake-0",
            model_name="bench",
            model_dir=model_dir,
            router_address=f"127.0.0.1:{ports['fleet_port']}",
            port=worker_port,
            fake_engine=True,
        )
        (tmp / "worker.json").write_text(spec.model_dump_json())
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "mainsail.workers", "--spec", str(tmp / "worker.json")],
                env=env,
            )
        )
        router_http = f"http://127.0.0.1:{ports['http_port']}"
        deadline = time.monotonic() + 180  # a busy machine: the worker imports torch
        # /health answers 200 with no worker too (a pool at zero is ready): wait for the worker.
        while httpx.get(router_http + "/health").json().get("workers") != 1:
            if time.monotonic() > deadline or procs[-1].poll() is not None:
                raise RuntimeError("worker did not register")
            time.sleep(0.1)
        from mainsail.spec.tokenizer import Tokenizer

        token_ids = Tokenizer(model_dir).encode(PROMPT)
        runs = [
            asyncio.run(
                _measure(
                    f"127.0.0.1:{worker_port}",
                    f"127.0.0.1:{ports['grpc_port']}",
                    router_http,
                    "bench",
                    token_ids,
                    args.requests,
                    args.clients,
                )
            )
            for _ in range(args.repeats)
        ]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)

    names = list(runs[0])
    med = {n: {k: statistics.median(r[n][k] for r in runs) for k in runs[0][n]} for n in names}
    base = med[names[0]]
    print(
        f"\nRouter overhead, {MAX_TOKENS} streamed tokens per request, fake engine, loopback, "
        f"{os.cpu_count()} CPUs; medians of {args.repeats} runs x {args.requests} sequential "
        f"requests; throughput with {args.clients} concurrent streams.\n"
    )
    print(
        "| path | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | e2e p99 ms | added TTFT p50 ms "
        f"| req/s @{args.clients} |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        m = med[name]
        added = m["ttft_p50_ms"] - base["ttft_p50_ms"]
        print(
            f"| {name} | {m['ttft_p50_ms']:.2f} | {m['ttft_p99_ms']:.2f} | "
            f"{m['e2e_p50_ms']:.2f} | {m['e2e_p99_ms']:.2f} | {added:+.2f} | {m['rps']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
