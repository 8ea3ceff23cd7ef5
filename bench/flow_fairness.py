"""What fair queuing buys a light tenant beside a heavy one (issue 14), on the real engine.

A real router (API keys on) and one real worker (tiny checkpoint, CPU, `--max-num-seqs`
sequences) on loopback. Each round, the heavy tenant floods the router with `--heavy`
concurrent streamed requests; once they are queued, the light tenant sends `--light` (ten
times fewer). Two modes, interleaved round by round so machine noise hits both alike:

- fair: the light tenant uses its own API key, so it is its own flow in the fair queue;
- fifo: the light tenant sends with the heavy tenant's key — one flow, served in deadline
  (here: arrival) order, which is what the router did before flow control.

Prints, per mode, the light tenant's TTFT p50 / max and the heavy tenant's TTFT p50
(client-side, to the first SSE event), medians over the rounds, and how often the light
tenant met `--ttft-slo-ms`. Usage: `python bench/flow_fairness.py [--rounds 3] [--heavy 40]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.fleet import CLIENT_KEYS, MODEL, fleet

from mainsail.spec.engine_settings import EngineSettings
from mainsail.workers.checkpoint import ensure_checkpoint

HEAVY_KEY, LIGHT_KEY = CLIENT_KEYS


async def _ttft(http: httpx.AsyncClient, key: str, prompt: str, max_tokens: int) -> float:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True}
    body["ignore_eos"] = True
    started = time.monotonic()
    first = 0.0
    headers = {"Authorization": f"Bearer {key}"}
    async with http.stream("POST", "/v1/completions", json=body, headers=headers) as reply:
        reply.raise_for_status()
        async for line in reply.aiter_lines():
            if line.startswith("data:") and not first:
                first = time.monotonic() - started
    return first


async def _round(
    http: httpx.AsyncClient, waiting: object, args: argparse.Namespace, fair: bool
) -> tuple[list[float], list[float]]:
    heavy = [
        asyncio.ensure_future(_ttft(http, HEAVY_KEY, f"heavy {i} says", args.max_tokens))
        for i in range(args.heavy)
    ]
    chooser = waiting
    for _ in range(1000):  # the flood is queued at the router (bounded: 10 s)
        if chooser.waiting >= args.heavy // 2:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.01)
    key = LIGHT_KEY if fair else HEAVY_KEY
    light = [
        asyncio.ensure_future(_ttft(http, key, f"light {i} says", args.max_tokens))
        for i in range(args.light)
    ]
    return list(await asyncio.gather(*light)), list(await asyncio.gather(*heavy))


async def main(args: argparse.Namespace) -> None:
    model_dir = ensure_checkpoint("llama")
    engine = EngineSettings(max_model_len=512, max_num_seqs=args.max_num_seqs)
    results: dict[str, list[tuple[float, float, float, float]]] = {"fair": [], "fifo": []}
    async with (
        fleet(model_dir, workers=1, engine=engine) as f,
        httpx.AsyncClient(base_url=f.http, timeout=300) as http,
    ):
        await _ttft(http, LIGHT_KEY, "warm up", 4)
        for _ in range(args.rounds):
            for mode in ("fair", "fifo"):
                light, heavy = await _round(http, f.router.router.chooser, args, mode == "fair")
                met = sum(t * 1000 <= args.ttft_slo_ms for t in light) / len(light)
                results[mode].append(
                    (statistics.median(light), max(light), statistics.median(heavy), met)
                )
    print(
        f"{args.heavy} heavy + {args.light} light streamed requests per round, "
        f"{args.max_tokens} tokens, 1 worker x {args.max_num_seqs} seqs, {args.rounds} rounds"
    )
    for mode, rows in results.items():
        light_p50 = statistics.median(r[0] for r in rows)
        light_max = statistics.median(r[1] for r in rows)
        heavy_p50 = statistics.median(r[2] for r in rows)
        met = statistics.median(r[3] for r in rows)
        print(
            f"  {mode:4s}  light TTFT p50 {light_p50:6.3f} s  max {light_max:6.3f} s  "
            f"heavy TTFT p50 {heavy_p50:6.3f} s  light within {args.ttft_slo_ms:g} ms: "
            f"{100 * met:5.1f} %"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--heavy", type=int, default=40)
    parser.add_argument("--light", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-num-seqs", type=int, default=2)
    parser.add_argument("--ttft-slo-ms", type=float, default=2000)
    asyncio.run(main(parser.parse_args()))
