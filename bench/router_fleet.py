"""Active-active router replicas: requests/s and latency with 1, 2 and 3 routers, one run.

Setup (loopback, each part its own process): `--workers` Mainsail workers on the fake engine
(`python -m mainsail.workers`, `fake_engine: true`: instant tokens, so the figures are the
routers' own cost), each registered with every router replica (static discovery, as
`mainsail up --routers N` does), and N router processes (`python -m mainsail.router`). The
client sends streamed `/v1/completions` round-robin over the replicas (what a Service spreading
connections does).

Per replica count, in an order rotated per repeat: streamed TTFT and end-to-end p50 over
`--requests` sequential requests (after warm-up), then requests/s with `--clients` concurrent
streaming clients sending `--concurrent-requests` in all, and the routers' CPU time per
request (all replicas together, from /proc). Added latency = TTFT p50 with N replicas - with
1, in the same repeat. Every figure is the median over `--repeats`.

On a 2-core machine the replicas, the workers and the client share the same two cores, so more
replicas cannot add throughput here; the figures show what active-active costs (heartbeats to
every replica, per-router load reports, KV events fanned out to every replica), not how it
scales on separate nodes.

Usage: `python bench/router_fleet.py [--replicas 1,2,3] [--repeats 3] [--requests 300]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]

from mainsail.router.settings import RouterConfig
from mainsail.sim.live_processes import LiveProcesses
from mainsail.spec.engine_settings import EngineSettings
from mainsail.spec.worker_auth import WORKER_TOKEN_ENV, generate_token
from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.worker_spec import WorkerSpec

MODEL = "bench"
PROMPT = "The quick brown fox jumps over the lazy dog. " * 4
MAX_TOKENS = 16


class Fleet:
    """N router processes and W fake-engine workers registered with all of them."""

    def __init__(self, tmp: Path, model_dir: Path, routers: int, workers: int) -> None:
        self.model_dir = model_dir
        self.n_routers, self.n_workers = routers, workers
        self.processes = LiveProcesses(tmp)
        self.router_procs: list[subprocess.Popen[bytes]] = []
        self.http: list[str] = []

    def start(self) -> None:
        fleet: list[str] = []
        for i in range(self.n_routers):
            config = RouterConfig(
                model_name=MODEL, model_dir=self.model_dir, http_port=0, grpc_port=0, fleet_port=0
            )
            proc, ports = self.processes.start_router(f"router{i}", config, timeout=90)
            self.router_procs.append(proc)
            self.http.append(ports.http)
            fleet.append(ports.fleet)
        for k in range(self.n_workers):
            spec = WorkerSpec(
                worker_id=f"w{k}",
                model_name=MODEL,
                model_dir=self.model_dir,
                engine=EngineSettings(max_num_seqs=4096),
                router_address=fleet[0],
                router_addresses=tuple(fleet[1:]),
                fake_engine=True,
                metrics_port=None,
            )
            self.processes.start_worker(f"worker{k}", spec)
        # Every replica sees every worker.
        self.processes.wait_registered(self.http, self.n_workers, timeout=90)

    def router_cpu(self) -> float:
        total = 0.0
        for proc in self.router_procs:
            times = psutil.Process(proc.pid).cpu_times()
            total += times.user + times.system
        return total

    def stop(self) -> None:
        self.processes.stop(timeout=10)


async def _one(http: httpx.AsyncClient, base: str) -> tuple[float, float]:
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "stream": True}
    t0 = time.perf_counter()
    ttft = 0.0
    done = False
    async with http.stream("POST", f"{base}/v1/completions", json=body) as reply:
        reply.raise_for_status()
        async for line in reply.aiter_lines():
            if line.startswith("data: ") and not ttft:
                ttft = time.perf_counter() - t0
            if line == "data: [DONE]":
                done = True
    if not done:
        raise RuntimeError("stream ended without [DONE]")
    return ttft, time.perf_counter() - t0


async def measure(fleet: Fleet, requests: int, clients: int, total: int) -> dict[str, float]:
    bases = fleet.http
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        for i in range(20 * len(bases)):  # warm-up
            await _one(http, bases[i % len(bases)])
        ttfts, e2es = [], []
        for i in range(requests):
            ttft, e2e = await _one(http, bases[i % len(bases)])
            ttfts.append(ttft)
            e2es.append(e2e)
    counter = iter(range(total))
    errors = 0
    # A fresh pool: connections idle through the sequential phase may have been closed.
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        cpu0 = fleet.router_cpu()

        async def client() -> None:
            nonlocal errors
            for i in counter:
                try:
                    await _one(http, bases[i % len(bases)])
                except httpx.TransportError:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
        cpu = fleet.router_cpu() - cpu0
    return {
        "ttft_p50_ms": statistics.median(ttfts) * 1000,
        "e2e_p50_ms": statistics.median(e2es) * 1000,
        "req_s": (total - errors) / elapsed,
        "errors": errors,
        "router_cpu_ms_per_req": cpu / total * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", default="1,2,3", help="Router replica counts to compare.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300, help="Sequential, for latency.")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--concurrent-requests", type=int, default=1500)
    args = parser.parse_args()
    counts = [int(c) for c in args.replicas.split(",")]
    os.environ.setdefault(WORKER_TOKEN_ENV, generate_token())
    model_dir = ensure_checkpoint("llama")
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    added: dict[int, list[float]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="router-fleet-") as tmp:
        for repeat in range(args.repeats):
            order = counts[repeat % len(counts) :] + counts[: repeat % len(counts)]
            this: dict[int, dict[str, float]] = {}
            for n in order:
                fleet = Fleet(Path(tmp), model_dir, n, args.workers)
                try:
                    fleet.start()
                    this[n] = asyncio.run(
                        measure(fleet, args.requests, args.clients, args.concurrent_requests)
                    )
                finally:
                    fleet.stop()
                runs[n].append(this[n])
                print(f"repeat {repeat} replicas {n}: {this[n]}", file=sys.stderr, flush=True)
            base = this.get(1, this[counts[0]])["ttft_p50_ms"]
            for n in counts:
                added[n].append(this[n]["ttft_p50_ms"] - base)
    cores = os.cpu_count()
    print(f"{args.workers} fake-engine workers, {cores} cores, medians of {args.repeats}")
    print("| replicas | req/s | TTFT p50 | vs 1 replica | e2e p50 | router CPU/req | errors |")
    print("|---|---|---|---|---|---|---|")
    for n in counts:
        med = {k: statistics.median(r[k] for r in runs[n]) for k in runs[n][0]}
        print(
            f"| {n} | {med['req_s']:.0f} | {med['ttft_p50_ms']:.2f} ms | "
            f"{statistics.median(added[n]):+.2f} ms | {med['e2e_p50_ms']:.2f} ms | "
            f"{med['router_cpu_ms_per_req']:.2f} ms | {sum(r['errors'] for r in runs[n]):.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
