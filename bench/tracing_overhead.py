"""Tracing overhead: what recording and exporting every request's trace adds to the router.

Setup (all on loopback, each part its own process): two identical stacks — a router and one
worker serving `FakeEngine` (instant tokens, through the real Worker gRPC service) — one with
`spec.tracing` off, one with it on (sample ratio 1: every request traced, router and worker),
exporting through the production path (OTLP/gRPC exporter behind the SDK's batch processor)
to a sink process that accepts and counts spans (a stand-in for an OpenTelemetry collector).
Repeats alternate between the two stacks, so both see the same machine load.

For each stack: TTFT and end-to-end p50 over sequential streamed requests through the HTTP
(SSE) and gRPC fronts, and requests/s with `--clients` concurrent HTTP streams; every figure
is the median over `--repeats`. Also, in this process: what the tracing-off path costs one
request (the calls the request path makes on `NO_TRACE`; best of 5 x 200k), and that it never
loads the recording side (the module that imports OpenTelemetry). Usage:
`python bench/tracing_overhead.py [--requests 300] [--repeats 5] [--clients 32] [--noop-only]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import httpx
from router_overhead import Timing, _concurrent, _pct, _sequential, _via_grpc, _via_http

from mainsail.cli.local.redis_server import free_port
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.router.settings import RouterConfig
from mainsail.spec.router_auth import ADMIN_TOKEN_ENV
from mainsail.spec.tracing import Tracing
from mainsail.spec.worker_auth import WORKER_TOKEN_ENV
from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.worker_spec import WorkerSpec

MODEL = "bench"


def sink(port: int, out: Path) -> int:
    """An OTLP/gRPC trace receiver that counts spans; writes the count to ``out`` on SIGTERM."""
    from concurrent import futures

    from opentelemetry.proto.collector.trace.v1 import (
        trace_service_pb2 as ts,
    )
    from opentelemetry.proto.collector.trace.v1 import (
        trace_service_pb2_grpc as ts_grpc,
    )

    count = [0]

    class Receiver(ts_grpc.TraceServiceServicer):
        def Export(self, request: ts.ExportTraceServiceRequest, context: object) -> object:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    count[0] += len(scope.spans)
            return ts.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    ts_grpc.add_TraceServiceServicer_to_server(Receiver(), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()

    def stop(*_: object) -> None:
        server.stop(2).wait()
        out.write_text(str(count[0]))
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    server.wait_for_termination()
    return 0


def noop_cost() -> float:
    """Microseconds the tracing-off path adds to one request: the calls the request path makes
    on the disabled trace (front, open, phases, a scheduling pass, a dispatch, the end)."""
    from mainsail.proto.v1 import mainsail_pb2 as pb
    from mainsail.router.scheduling.types import Decision
    from mainsail.router.tracing import RouterTracing

    tracing = RouterTracing(Tracing())
    decision, chunk = Decision("w0"), pb.TokenChunk(finish_reason="stop")
    work, headers = pb.WorkerRequest(request_id="r"), [(b"host", b"x")]

    def one() -> None:
        trace = tracing.begin("http", headers, "/v1/completions")
        trace.start()
        with trace.phase("mainsail.prepare"):
            pass
        with trace.phase("mainsail.dispatch"):
            with trace.phase("mainsail.admission"):
                pass
            trace.decision(decision, 1e-5, 1)
            trace.attempt("w0", "unified", 0, work)
        trace.finish(chunk, "w0", True)

    n, best = 200_000, float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            one()
        best = min(best, (time.perf_counter() - t0) / n)
    if "mainsail.router.tracing_live" in sys.modules:  # the module that imports OpenTelemetry
        raise RuntimeError("tracing off loaded the recording side")
    return best * 1e6


def _wait_file(path: Path, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)


def _stack(
    tmp: Path, name: str, model_dir: Path, tracing: Tracing, procs: list[subprocess.Popen[bytes]]
) -> tuple[str, str]:
    """Start a router and a fake-engine worker; their HTTP base URL and gRPC address."""
    config = RouterConfig(
        model_name=MODEL,
        model_dir=model_dir,
        http_port=0,
        grpc_port=0,
        fleet_port=0,
        max_model_len=1024,
        tracing=tracing,
    )
    (tmp / f"{name}-router.json").write_text(config.model_dump_json())
    ready = tmp / f"{name}-ready"
    admin = f"{name}-admin"  # the router's admin token (without one /workers is refused)
    env = {**os.environ, WORKER_TOKEN_ENV: secrets.token_hex(32)}  # the stack's worker plane
    router = subprocess.Popen(
        [sys.executable, "-m", "mainsail.router", "--config", str(tmp / f"{name}-router.json"),
         "--ready-file", str(ready), "--log-level", "WARNING"],
        env={**env, ADMIN_TOKEN_ENV: admin},
    )  # fmt: skip
    procs.append(router)
    _wait_file(ready, router, f"{name} router")
    ports = json.loads(ready.read_text())
    spec = WorkerSpec(
        worker_id=f"{name}-0",
        model_name=MODEL,
        model_dir=model_dir,
        router_address=f"127.0.0.1:{ports['fleet_port']}",
        port=free_port(),
        metrics_port=None,
        fake_engine=True,
        tracing=tracing,
    )
    (tmp / f"{name}-worker.json").write_text(spec.model_dump_json())
    procs.append(
        subprocess.Popen(
            [sys.executable, "-m", "mainsail.workers", "--spec", str(tmp / f"{name}-worker.json")],
            env=env,
        )
    )
    http = f"http://127.0.0.1:{ports['http_port']}"
    deadline = time.monotonic() + 180  # a busy machine: the worker imports torch and Ray
    auth = {"Authorization": f"Bearer {admin}"}
    while not httpx.get(http + "/workers", headers=auth).json()["data"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} worker did not register")
        time.sleep(0.1)
    return http, f"127.0.0.1:{ports['grpc_port']}"


async def _measure(http: str, grpc_addr: str, requests: int, clients: int) -> dict[str, float]:
    async with (
        grpc.aio.insecure_channel(grpc_addr) as channel,
        httpx.AsyncClient(
            base_url=http, timeout=60, limits=httpx.Limits(max_connections=clients)
        ) as client,
    ):
        inference = pb_grpc.InferenceStub(channel)
        paths: dict[str, Callable[[int], Awaitable[Timing]]] = {
            "http": lambda i: _via_http(client, MODEL, i),
            "grpc": lambda i: _via_grpc(inference, MODEL, i),
        }
        out: dict[str, float] = {}
        for name, call in paths.items():
            timings = await _sequential(call, requests)
            out[f"{name}_ttft_ms"] = 1000 * _pct([t for t, _ in timings], 0.5)
            out[f"{name}_e2e_ms"] = 1000 * _pct([e for _, e in timings], 0.5)
        out["http_rps"] = await _concurrent(paths["http"], clients, requests * 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--noop-only", action="store_true", help="only the tracing-off cost")
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)  # internal: run the sink
    parser.add_argument("--sink-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        return sink(args.sink, args.sink_out)
    off_us = noop_cost()
    print(f"tracing off: {off_us:.2f} us per request (no-op calls; recording side not loaded)")
    if args.noop_only:
        return 0

    model_dir = ensure_checkpoint("llama")
    tmp = Path(tempfile.mkdtemp(prefix="mainsail-bench-tracing-"))
    sink_port, sink_out = free_port(), tmp / "spans"
    procs: list[subprocess.Popen[bytes]] = []
    spans = 0
    try:
        sink_proc = subprocess.Popen(
            [sys.executable, __file__, "--sink", str(sink_port), "--sink-out", str(sink_out)]
        )
        procs.append(sink_proc)
        on = Tracing(enabled=True, endpoint=f"http://127.0.0.1:{sink_port}", sample_ratio=1.0)
        stacks = {
            "off": _stack(tmp, "off", model_dir, Tracing(), procs),
            "on": _stack(tmp, "on", model_dir, on, procs),
        }
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in stacks}
        for _ in range(args.repeats):
            for name, (http, grpc_addr) in stacks.items():
                runs[name].append(
                    asyncio.run(_measure(http, grpc_addr, args.requests, args.clients))
                )
    finally:
        for proc in reversed(procs):
            proc.terminate()  # routers and workers flush their spans to the sink on the way out
            proc.wait(30)
        if sink_out.exists():
            spans = int(sink_out.read_text())

    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
    traced = args.repeats * (2 * (args.requests + 10) + 2 * args.requests)  # incl. warm-ups
    print(
        f"\nTracing overhead: fake engine, 16 streamed tokens per request, loopback, "
        f"{os.cpu_count()} CPUs shared by client, routers, workers and the span sink; medians "
        f"of {args.repeats} alternating repeats x {args.requests} sequential requests per "
        f"front; throughput with {args.clients} concurrent HTTP streams. Spans received by "
        f"the sink: {spans} for {traced} traced requests.\n"
    )
    print("| figure | tracing off | tracing on (ratio 1, OTLP batch export) | added |")
    print("|---|---|---|---|")
    labels = {
        "http_ttft_ms": "HTTP SSE TTFT p50 ms",
        "http_e2e_ms": "HTTP SSE e2e p50 ms",
        "grpc_ttft_ms": "gRPC TTFT p50 ms",
        "grpc_e2e_ms": "gRPC e2e p50 ms",
        "http_rps": f"HTTP req/s @{args.clients}",
    }
    for key, label in labels.items():
        off, traced_value = med["off"][key], med["on"][key]
        added = traced_value - off
        print(f"| {label} | {off:.2f} | {traced_value:.2f} | {added:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
