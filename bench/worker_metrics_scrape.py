"""What a worker's /metrics costs: scrape latency, and decode speed with and without a
scraper hammering the endpoint.

One worker (`WorkerHost`, real engine on the generated tiny checkpoint, no router) serves
`--requests` greedy requests one after another, generating `--tokens` tokens each, twice per
round, interleaved over `--repeats` rounds: once alone and once while a thread scrapes its
/metrics every `--interval` seconds (far more often than Prometheus would). Prints tokens/s
for both (medians over the rounds) and the scrape latency p50/p99. The scrape reads the
engine's per-step snapshot on the metrics server's own thread, so the decode rate should not
move beyond noise. Usage: `python bench/worker_metrics_scrape.py [--requests 8] [--tokens 64]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time

import httpx

from mainsail.spec.engine_settings import EngineSettings
from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.engine import AsyncEngine, EngineRequest, SamplingParams
from mainsail.workers.host import WorkerHost
from mainsail.workers.worker_spec import WorkerSpec


def _scraper(url: str, interval: float, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(timeout=10) as http:
        while not stop.is_set() and len(out) < 100_000:
            start = time.perf_counter()
            http.get(url).raise_for_status()
            out.append(time.perf_counter() - start)
            stop.wait(interval)


async def _decode(engine: AsyncEngine, requests: int, tokens: int, tag: str) -> float:
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    made = 0
    for i in range(requests):
        prompt = [3 + (i * 7 + j) % 400 for j in range(32)]
        req = EngineRequest(f"{tag}-{i}", prompt, params)
        made += sum([len(o.new_token_ids) async for o in engine.generate(req)])
    return made / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.01)
    args = parser.parse_args()
    spec = WorkerSpec(
        worker_id="bench",
        model_name="tiny",
        model_dir=ensure_checkpoint("llama"),
        engine=EngineSettings(max_model_len=512),
    )
    host = WorkerHost(spec)
    await host.start()
    try:
        assert isinstance(host.engine, AsyncEngine)
        url = f"http://{host.metrics_address}/metrics"
        alone: list[float] = []
        scraped: list[float] = []
        latencies: list[float] = []
        await _decode(host.engine, 2, 8, "warm")
        for r in range(args.repeats):
            alone.append(await _decode(host.engine, args.requests, args.tokens, f"a{r}"))
            stop = threading.Event()
            thread = threading.Thread(
                target=_scraper, args=(url, args.interval, stop, latencies), daemon=True
            )
            thread.start()
            try:
                scraped.append(await _decode(host.engine, args.requests, args.tokens, f"s{r}"))
            finally:
                stop.set()
                await asyncio.to_thread(thread.join, 10)
    finally:
        await host.stop()
    ordered = sorted(latencies)
    print(f"decode tokens/s alone:          {statistics.median(alone):8.1f}  {alone}")
    print(f"decode tokens/s while scraping: {statistics.median(scraped):8.1f}  {scraped}")
    print(
        f"scrapes: {len(ordered)}, latency p50 {ordered[len(ordered) // 2] * 1000:.2f} ms, "
        f"p99 {ordered[int(len(ordered) * 0.99)] * 1000:.2f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
