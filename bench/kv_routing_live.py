"""KV-aware routing, live: the real stack, the real engine, prompts from the Mooncake trace.

For each routing policy the script starts `mainsail up` (`--model-size` generated CPU model,
`small` by default, `--workers` unified workers), replays the first `--requests` Mooncake
requests in arrival order (open loop, time-compressed by `--speedup`, bounded by
`--max-seconds`), and reports:

- prefix hit rate: cached prompt tokens / prompt tokens, from each response's `usage`;
- TTFT p50/p99 measured by the client (first SSE event with text);
- spread: the share of requests each worker served (from the `X-Mainsail-Worker` header),
  and the largest share relative to a fair share.

Prompts: each 512-token Mooncake block id becomes `--tokens-per-block` deterministic tokens
(`mainsail.sim.prompts.trace_block_tokens`, cut), so requests share exactly the prefixes the
trace says they share, scaled to what a small CPU model's context holds.

Why the `small` model: on the `tiny` one (hidden 64, 2 layers) a prefill of a thousand tokens
takes ~14 ms on one core, so TTFT is per-step overhead plus queueing and a cache hit saves
nothing measurable. The `small` one (hidden 256, 4 layers) takes ~140 ms, as a real model's
prefill dominates its TTFT. The default rate (`--speedup`) loads round-robin without
saturating it (every policy must drain the replay in time).

Why 1000 requests and 16384 blocks per worker: the trace reuses a conversation's prefix about
two hundred requests later (median reuse distance), so a shorter window or a cache of a few dozen
prompts per worker leaves little for any policy to find (400 requests: one infinite cache would
hit 18 %; 1000: 25 %), and the comparison measures eviction rather than placement.

Usage: `python bench/kv_routing_live.py [--requests 1000] [--workers 4] [--repeats 3]` (about
30 minutes on two cores). Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml

from mainsail.cli.defaults import TINY_DEPLOYMENT
from mainsail.cli.local.child import UpProcess
from mainsail.sim.prompts import trace_block_tokens
from mainsail.sim.traces import default_data_dir, load_mooncake
from mainsail.spec import sse

POLICIES: dict[str, dict[str, Any]] = {
    "round-robin": {"filters": ["healthy"], "scorers": [], "picker": "round-robin"},
    "least-loaded": {
        "filters": ["healthy", "capacity"],
        "scorers": [
            {"name": "running-requests", "weight": 1.0},
            {"name": "queue-depth", "weight": 1.0},
        ],
        "picker": "max-score",
    },
    "kv-aware (default)": {},
}


def build_prompts(
    n: int, tokens_per_block: int, max_blocks: int
) -> list[tuple[float, list[int], int]]:
    """(arrival seconds, prompt token ids, max_tokens) for the first ``n`` Mooncake requests."""
    trace = load_mooncake(default_data_dir() / "mooncake_fast25_conversation_trace.jsonl", limit=n)
    out = []
    for req in trace:
        ids: list[int] = []
        for block_id in req.block_ids[:max_blocks]:
            ids.extend(trace_block_tokens(block_id, vocab_size=500)[:tokens_per_block])
        out.append((req.arrival_s, [t + 3 for t in ids], min(req.output_tokens, 8)))
    return out


def ideal_hit_rate(prompts: list[tuple[float, list[int], int]], block: int) -> float:
    """Hit rate of one infinite cache over the replay: the ceiling for any policy."""
    seen: set[tuple[int, ...]] = set()
    hit = total = 0
    for _, ids, _ in prompts:
        blocks = [tuple(ids[: i + block]) for i in range(0, len(ids) - block + 1, block)]
        depth = 0
        for key in blocks:
            if key not in seen:
                break
            depth += 1
        seen.update(blocks)
        hit += depth * block
        total += len(ids)
    return hit / max(1, total)


async def _one(
    client: httpx.AsyncClient, model: str, prompt: list[int], max_tokens: int, delay: float
) -> dict[str, Any]:
    await asyncio.sleep(delay)
    t0 = time.perf_counter()
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "ignore_eos": True,
    }
    ttft = None
    usage: dict[str, Any] = {}
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        worker = resp.headers.get("x-mainsail-worker", "?")
        async for event in sse.json_events(resp.aiter_lines()):
            if ttft is None and event.get("choices"):
                ttft = time.perf_counter() - t0
            if event.get("usage"):
                usage = event["usage"]
    return {
        "ttft": ttft or 0.0,
        "worker": worker,
        "prompt": usage.get("prompt_tokens", 0),
        "cached": usage.get("prompt_tokens_details", {}).get("cached_tokens", 0),
    }


async def replay(
    base: str,
    model: str,
    prompts: list[tuple[float, list[int], int]],
    speedup: float,
    max_seconds: float,
) -> list[dict[str, Any]]:
    start = prompts[0][0]
    async with httpx.AsyncClient(
        base_url=base, timeout=120, limits=httpx.Limits(max_connections=256)
    ) as client:
        tasks = [_one(client, model, p, m, (t - start) / speedup) for t, p, m in prompts]
        return list(await asyncio.wait_for(asyncio.gather(*tasks), timeout=max_seconds))


def run_policy(
    name: str,
    profile: dict[str, Any],
    args: argparse.Namespace,
    prompts: list[tuple[float, list[int], int]],
) -> dict[str, Any]:
    doc = yaml.safe_load(TINY_DEPLOYMENT)
    doc["spec"]["pools"]["unified"]["replicas"] = args.workers
    doc["spec"]["model"]["size"] = args.model_size
    doc["spec"]["engine"]["maxModelLen"] = max(1024, args.tokens_per_block * args.max_blocks + 64)
    doc["spec"]["engine"]["numKvBlocks"] = args.kv_blocks
    # Without the shared Redis tier every hit is a routing decision's doing.
    doc["spec"]["pools"]["cache"] = {"enabled": args.with_redis}
    if profile:
        doc["spec"]["router"]["profile"] = profile
    tmp = Path(tempfile.mkdtemp(prefix="mainsail-kvbench-"))
    (tmp / "d.yaml").write_text(yaml.safe_dump(doc))
    with UpProcess(tmp, ["-f", str(tmp / "d.yaml"), "--http-port", "0", "--grpc-port", "0"]) as up:
        ep = up.start()
        results = asyncio.run(
            replay(ep["http"], ep["model"], prompts, args.speedup, args.max_seconds)
        )
    ttfts = sorted(r["ttft"] for r in results)
    share = Counter(r["worker"] for r in results)
    fair = len(results) / args.workers
    return {
        "policy": name,
        "hit_rate": sum(r["cached"] for r in results) / max(1, sum(r["prompt"] for r in results)),
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p99_ms": 1000 * ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
        "max_share_vs_fair": max(share.values()) / fair,
        "spread": dict(sorted(share.items())),
    }


def _median_row(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric medians over repeated runs of one policy (spread from the median run)."""
    row = dict(results[0])
    for key in ("hit_rate", "ttft_p50_ms", "ttft_p99_ms", "max_share_vs_fair"):
        row[key] = statistics.median(r[key] for r in results)
    row["spread"] = sorted(results, key=lambda r: r["hit_rate"])[len(results) // 2]["spread"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--model-size", choices=["tiny", "small"], default="small")
    parser.add_argument("--tokens-per-block", type=int, default=64)
    parser.add_argument("--max-blocks", type=int, default=16)
    parser.add_argument(
        "--speedup",
        type=float,
        default=2.5,
        help="Trace time compression (arrivals this many times faster).",
    )
    parser.add_argument("--max-seconds", type=float, default=400.0)
    parser.add_argument(
        "--kv-blocks",
        type=int,
        default=16384,
        help="KV blocks per worker (cache pressure; 16384 x 16 tokens holds ~340 prompts).",
    )
    parser.add_argument(
        "--with-redis",
        action="store_true",
        help="Keep the shared Redis KV tier on (hits then also come from Redis).",
    )
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--repeats", type=int, default=3, help="Runs per policy; medians.")
    args = parser.parse_args()
    prompts = build_prompts(args.requests, args.tokens_per_block, args.max_blocks)
    span = (prompts[-1][0] - prompts[0][0]) / args.speedup
    tokens = sum(len(p) for _, p, _ in prompts)
    print(
        f"Settings: {args.model_size} model, {len(prompts)} requests over {span:.0f} s "
        f"({len(prompts) / max(span, 1e-9):.1f} req/s, {tokens / max(span, 1e-9):.0f} prompt "
        f"tokens/s offered to {args.workers} workers), prompts of "
        f"{tokens / len(prompts):.0f} tokens on average (<= {args.max_blocks} trace blocks x "
        f"{args.tokens_per_block} tokens), at most 8 output tokens",
        flush=True,
    )
    names = args.policies.split(",")
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every policy
        for n in names:
            runs[n].append(run_policy(n, POLICIES[n], args, prompts))
            r = runs[n][-1]
            print(
                f"  run {n}: hit {r['hit_rate']:.1%}, TTFT p50 {r['ttft_p50_ms']:.0f} ms, "
                f"p99 {r['ttft_p99_ms']:.0f} ms, max share {r['max_share_vs_fair']:.2f}",
                flush=True,
            )
    rows = [_median_row(runs[n]) for n in names]
    print(
        f"\nLive replay: {len(prompts)} Mooncake requests, {args.workers} {args.model_size}-CPU "
        f"workers with "
        f"{args.kv_blocks} KV blocks each, {args.tokens_per_block} tokens per trace block, "
        f"speedup {args.speedup:g}x, medians of {args.repeats} runs, "
        f"Redis tier {'on' if args.with_redis else 'off'}; "
        f"ideal hit rate (one infinite cache) "
        f"{ideal_hit_rate(prompts, 16):.1%}\n"
    )
    print("| policy | prefix hit rate | TTFT p50 ms | TTFT p99 ms | max share / fair |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['policy']} | {r['hit_rate']:.1%} | {r['ttft_p50_ms']:.1f} | "
            f"{r['ttft_p99_ms']:.1f} | {r['max_share_vs_fair']:.2f} |"
        )
    for r in rows:
        print(f"spread {r['policy']}: {r['spread']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
