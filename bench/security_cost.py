"""What security costs: router latency and throughput with auth and TLS on vs off.

Two set-ups measured in the same run, interleaved (`--repeats` rounds of each, so machine
noise hits both alike), each a router process and one worker process serving `FakeEngine`
(instant tokens: only the serving path is measured), on loopback:

- open: no client API keys, plaintext router -> worker gRPC; the worker-plane token is on here
  too (`LiveProcesses` generates one), since a router or worker without one serves no one;
- secured: client API keys (HTTP `Authorization`, gRPC metadata), the worker-plane token on
  every Registry/Worker call, and mutual TLS on router -> worker gRPC (`mainsail.spec.
  worker_tls`).

Per set-up and path (router gRPC, router HTTP SSE): TTFT and end-to-end p50 over sequential
streamed requests, and requests/s with `--clients` concurrent streams. Prints medians over the
rounds and the secured/open ratios. Usage:
`python bench/security_cost.py [--requests 200] [--repeats 3] [--clients 32]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
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
from mainsail.sim.live_processes import LiveProcesses
from mainsail.spec import sse
from mainsail.spec.router_auth import API_KEYS_ENV
from mainsail.spec.worker_auth import WORKER_TLS_DIR_ENV, WORKER_TOKEN_ENV, generate_token
from mainsail.spec.worker_tls import issue, write
from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.worker_spec import WorkerSpec

MAX_TOKENS = 16
PROMPT = "The quick brown fox jumps over the lazy dog. " * 4
KEY = "sk-bench"
Timing = tuple[float, float]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Stack:
    """A router and a fake-engine worker as processes, with or without security."""

    def __init__(self, tmp: Path, secured: bool) -> None:
        self.tmp = tmp
        self.secured = secured
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAINSAIL_")}
        if secured:
            env[API_KEYS_ENV] = KEY
            env[WORKER_TOKEN_ENV] = generate_token()
            env[WORKER_TLS_DIR_ENV] = str(write(issue(), tmp / "tls"))
        self.processes = LiveProcesses(tmp, env)

    def start(self, model_dir: Path) -> tuple[str, str]:
        config = RouterConfig(
            model_name="bench",
            model_dir=model_dir,
            http_port=0,
            grpc_port=0,
            fleet_port=0,
            max_model_len=1024,
        )
        _, ports = self.processes.start_router("router", config, log_level="WARNING", timeout=60)
        spec = WorkerSpec(
            worker_id="fake-0", model_name="bench", model_dir=model_dir,
            router_address=ports.fleet, port=free_port(), fake_engine=True,
        )  # fmt: skip
        self.processes.start_worker("worker", spec)
        self.processes.wait_registered([ports.http], 1, timeout=180)  # busy: torch imports
        return ports.http, ports.grpc

    def stop(self) -> None:
        self.processes.stop(timeout=10)


async def _grpc_call(stub: pb_grpc.InferenceStub, md: tuple[tuple[str, str], ...]) -> Timing:
    t0 = time.perf_counter()
    ttft = 0.0
    req = pb.GenerateRequest(
        model="bench", prompt=PROMPT, sampling=pb.SamplingParams(max_tokens=MAX_TOKENS)
    )
    async for _ in stub.Generate(req, metadata=md):
        if not ttft:
            ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0


async def _http_call(client: httpx.AsyncClient) -> Timing:
    t0 = time.perf_counter()
    ttft = 0.0
    body = {"model": "bench", "prompt": PROMPT, "max_tokens": MAX_TOKENS, "stream": True}
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}")
        async for _event in sse.json_events(resp.aiter_lines()):
            if not ttft:
                ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0


async def _measure(
    http_url: str, grpc_addr: str, secured: bool, requests: int, clients: int
) -> dict[str, dict[str, float]]:
    md = (("authorization", f"Bearer {KEY}"),) if secured else ()
    headers = {"Authorization": f"Bearer {KEY}"} if secured else {}
    out: dict[str, dict[str, float]] = {}
    async with (
        grpc.aio.insecure_channel(grpc_addr) as channel,
        httpx.AsyncClient(
            base_url=http_url, headers=headers, timeout=60,
            limits=httpx.Limits(max_connections=clients),
        ) as http,
    ):  # fmt: skip
        stub = pb_grpc.InferenceStub(channel)
        paths: dict[str, Callable[[], Awaitable[Timing]]] = {
            "gRPC": lambda: _grpc_call(stub, md),
            "HTTP SSE": lambda: _http_call(http),
        }
        for name, call in paths.items():
            for _ in range(10):
                await call()
            timings = [await call() for _ in range(requests)]
            counter = iter(range(requests * 2))

            async def client(
                call: Callable[[], Awaitable[Timing]] = call, counter: object = counter
            ) -> None:
                for _ in counter:  # type: ignore[attr-defined]
                    await call()

            t0 = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), 300)
            out[name] = {
                "ttft_p50_ms": 1000 * _pct([t for t, _ in timings], 0.5),
                "e2e_p50_ms": 1000 * _pct([e for _, e in timings], 0.5),
                "rps": requests * 2 / (time.perf_counter() - t0),
            }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    model_dir = ensure_checkpoint("llama")
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"open": [], "secured": []}
    for _ in range(args.repeats):
        for name in runs:
            stack = Stack(Path(tempfile.mkdtemp(prefix=f"mainsail-sec-{name}-")), name == "secured")
            try:
                http_url, grpc_addr = stack.start(model_dir)
                runs[name].append(
                    asyncio.run(
                        _measure(http_url, grpc_addr, stack.secured, args.requests, args.clients)
                    )
                )
            finally:
                stack.stop()
    med = {
        name: {
            path: {k: statistics.median(r[path][k] for r in rs) for k in rs[0][path]}
            for path in rs[0]
        }
        for name, rs in runs.items()
    }
    print(
        f"\nSecurity cost, {MAX_TOKENS} streamed tokens per request, fake engine, loopback, "
        f"{os.cpu_count()} CPUs; medians of {args.repeats} interleaved rounds x "
        f"{args.requests} sequential requests; throughput with {args.clients} concurrent "
        "streams. secured = client API key + worker token + mutual TLS router->worker.\n"
    )
    print("| path | set-up | TTFT p50 ms | e2e p50 ms | req/s | TTFT ratio | req/s ratio |")
    print("|---|---|---|---|---|---|---|")
    for path in med["open"]:
        base = med["open"][path]
        for name in ("open", "secured"):
            m = med[name][path]
            print(
                f"| {path} | {name} | {m['ttft_p50_ms']:.2f} | {m['e2e_p50_ms']:.2f} | "
                f"{m['rps']:.0f} | {m['ttft_p50_ms'] / base['ttft_p50_ms']:.2f} | "
                f"{m['rps'] / base['rps']:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
