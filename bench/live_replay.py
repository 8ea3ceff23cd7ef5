"""Live replay: a trace against a running Mainsail, reported like the simulator reports.

Starts `mainsail up` (tiny CPU model, `--workers` unified workers) as a subprocess, or uses a
running stack given by `--url` (HTTP) and/or `--grpc` (host:port); replays the first
`--requests` requests of `--trace` open-loop at the trace's arrival times compressed by
`--time-scale`, over HTTP, gRPC or both, and prints the simulator's Markdown table (TTFT /
TPOT / E2E p50/p90/p99 measured at the client, SLO attainment, goodput, prefix hit rate,
per-worker spread). `--out DIR` also writes `report.md`.

Usage:
    python bench/live_replay.py --requests 200 --workers 2 --time-scale 20
    python bench/live_replay.py --url http://127.0.0.1:8000 --model tiny-llama --protocol http
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import yaml

from mainsail.cli.defaults import TINY_DEPLOYMENT
from mainsail.sim.live import (
    GrpcSender,
    HttpSender,
    LiveRequest,
    LiveSummary,
    PromptScaling,
    ReplaySettings,
    build_requests,
    render_live,
    replay,
    summarise_live,
)
from mainsail.sim.metrics import SLOTargets
from mainsail.sim.traces import default_jitter_s, load_trace, scale_trace

STARTUP_TIMEOUT_S = 300.0


@contextmanager
def mainsail_up(workers: int, kv_blocks: int, with_redis: bool) -> Iterator[dict[str, Any]]:
    """`mainsail up` on the tiny model in a subprocess; yields its ready-file endpoints."""
    doc = yaml.safe_load(TINY_DEPLOYMENT)
    doc["spec"]["pools"]["unified"]["replicas"] = workers
    doc["spec"]["engine"]["numKvBlocks"] = kv_blocks
    doc["spec"]["pools"]["cache"] = {"enabled": with_redis}
    tmp = Path(tempfile.mkdtemp(prefix="mainsail-live-"))
    (tmp / "d.yaml").write_text(yaml.safe_dump(doc))
    ready = tmp / "ready.json"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "mainsail.cli.main", "up", "-f", str(tmp / "d.yaml")]
    cmd += ["--http-port", "0", "--grpc-port", "0", "--ready-file", str(ready), "--quiet"]
    log = (tmp / "up.log").open("wb")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=log, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mainsail up failed: {(tmp / 'up.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield json.loads(ready.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


async def run_one(
    protocol: str,
    endpoint: str,
    model: str,
    requests: list[LiveRequest],
    settings: ReplaySettings,
    slo: SLOTargets,
    workers: list[str],
) -> LiveSummary:
    """Replays ``requests`` over one protocol and summarises them."""
    t0 = time.perf_counter()
    if protocol == "http":
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
        timeout = httpx.Timeout(settings.request_timeout_s, connect=10.0)
        async with httpx.AsyncClient(base_url=endpoint, timeout=timeout, limits=limits) as c:
            results = await replay(requests, HttpSender(c, model), settings)
    else:
        async with grpc.aio.insecure_channel(endpoint) as channel:
            results = await replay(requests, GrpcSender(channel, model), settings)
    return summarise_live(results, slo, protocol, time.perf_counter() - t0, workers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", default="mooncake", help="mooncake, azure-code, azure-conv")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--time-scale", type=float, default=20.0, help="Arrivals S-fold faster.")
    parser.add_argument(
        "--rate-scale", type=float, default=1.0, help="Superposed copies of the trace (as sim)."
    )
    parser.add_argument(
        "--jitter", type=float, help="Spread arrivals over [t, t+J) s (default: as the sim)."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="Whole replay bound.")
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--tokens-per-block", type=int, default=32)
    parser.add_argument("--max-blocks", type=int, default=24)
    parser.add_argument("--max-output-tokens", type=int, default=8)
    parser.add_argument("--protocol", choices=["http", "grpc", "both"], default="http")
    parser.add_argument("--url", help="Running router's HTTP base URL (skips `mainsail up`).")
    parser.add_argument("--grpc", help="Running router's gRPC host:port (skips `mainsail up`).")
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--workers", type=int, default=2, help="Workers `mainsail up` starts.")
    parser.add_argument("--kv-blocks", type=int, default=384, help="KV blocks per worker.")
    parser.add_argument("--with-redis", action="store_true", help="Keep the Redis KV tier.")
    parser.add_argument("--ttft-slo-ms", type=float, default=2000.0)
    parser.add_argument("--ttft-slo-per-1k-ms", type=float, default=100.0)
    parser.add_argument("--tpot-slo-ms", type=float, default=200.0)
    parser.add_argument("--out", type=Path, help="Directory for report.md.")
    args = parser.parse_args()

    scaling = PromptScaling(args.tokens_per_block, args.max_blocks, 500, 3, args.max_output_tokens)
    trace = load_trace(args.trace, limit=args.requests)
    jitter = default_jitter_s(args.trace) if args.jitter is None else args.jitter
    trace = scale_trace(trace, rate_scale=args.rate_scale, jitter_s=jitter, seed=args.seed)
    requests = build_requests(trace, scaling, args.time_scale)
    settings = ReplaySettings(max(1, len(requests)), args.max_seconds, args.request_timeout)
    slo = SLOTargets(
        args.ttft_slo_ms / 1000, args.ttft_slo_per_1k_ms / 1000, args.tpot_slo_ms / 1000
    )
    protocols = ["http", "grpc"] if args.protocol == "both" else [args.protocol]

    def run_all(http: str | None, grpc_addr: str | None, workers: list[str]) -> list[LiveSummary]:
        out = []
        for protocol in protocols:
            endpoint = http if protocol == "http" else grpc_addr
            if not endpoint:
                raise SystemExit(f"no endpoint for {protocol}: pass --url / --grpc")
            out.append(
                asyncio.run(
                    run_one(protocol, endpoint, args.model, requests, settings, slo, workers)
                )
            )
        return out

    if args.url or args.grpc:
        lives = run_all(args.url, args.grpc, [])
        where = args.url or args.grpc
    else:
        with mainsail_up(args.workers, args.kv_blocks, args.with_redis) as ep:
            args.model = ep["model"]
            lives = run_all(ep["http"], ep["grpc"], [])
        where = f"`mainsail up`, {args.workers} tiny-CPU workers, {args.kv_blocks} KV blocks each"
    setup: dict[str, object] = {
        "target": where,
        "trace": f"{args.trace}, first {args.requests} requests x rate-scale {args.rate_scale:g}, "
        f"jitter {jitter:g} s, time-scale {args.time_scale:g}x",
        "prompts": f"{args.tokens_per_block} tokens per trace block, at most {args.max_blocks} "
        f"blocks, at most {args.max_output_tokens} output tokens",
        "bounds": f"{args.max_seconds:g} s per replay, {args.request_timeout:g} s per request",
    }
    text = render_live(lives, slo, setup)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(text)
    return 0 if all(not s.errors for s in lives) else 1


if __name__ == "__main__":
    sys.exit(main())
