"""Reuse distance of a trace's prefix blocks: the hit rate an LRU cache of a given size allows.

Why: a KV-aware router can only win what the caches can hold. This replays the trace's
512-token prefix blocks through one global LRU cache per size (prefix hits only: a request hits
its leading blocks present in the cache, then every block is inserted) and prints the
fraction of prompt tokens that hit. The one-cache figure is an upper bound for a cluster of
workers whose device caches add up to the same size (a router that partitioned prefixes
perfectly); the unbounded cache is the trace's ideal. It also prints the reuse distance
(distinct blocks touched since the block's last use) percentiles of the hits.

    .venv/bin/python bench/kv_reuse.py                  # Mooncake hour
    .venv/bin/python bench/kv_reuse.py --sizes 0.4,1.6,6.4   # sizes in million tokens
"""

from __future__ import annotations

import argparse
from collections import OrderedDict

import numpy as np

from mainsail.sim.traces import TRACE_BLOCK_TOKENS, load_trace


def lru_hit_rate(trace: list[tuple[int, tuple[int, ...]]], capacity_blocks: int | None) -> float:
    """Prompt tokens hit / all prompt tokens with one LRU cache of ``capacity_blocks``."""
    cache: OrderedDict[tuple[int, ...], None] = OrderedDict()
    hit = total = 0
    for tokens, ids in trace:
        keys = [ids[: i + 1] for i in range(len(ids))]  # chained: a block names its prefix
        n = 0
        for k in keys:
            if k in cache:
                n += 1
            else:
                break
        hit += min(tokens - 1, n * TRACE_BLOCK_TOKENS) if n else 0
        total += tokens
        for k in keys:
            cache[k] = None
            cache.move_to_end(k)
        if capacity_blocks is not None:
            while len(cache) > capacity_blocks:
                cache.popitem(last=False)
    return hit / max(1, total)


def reuse_distances(trace: list[tuple[int, tuple[int, ...]]]) -> np.ndarray:
    """Distinct blocks touched between consecutive uses of each re-used leading block."""
    last: dict[tuple[int, ...], int] = {}
    stamp = 0
    out = []
    for _tokens, ids in trace:
        for i in range(len(ids)):
            k = ids[: i + 1]
            if k in last:
                out.append(stamp - last[k])
            last[k] = stamp
            stamp += 1
    return np.array(out, dtype=float)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default="mooncake")
    ap.add_argument(
        "--sizes", default="0.4,1.6,3.2,6.4,12.8,25.6", help="cache sizes, million tokens"
    )
    args = ap.parse_args()
    reqs = load_trace(args.trace)
    trace = [(r.input_tokens, r.block_ids) for r in reqs]
    blocks = sum(len(ids) for _, ids in trace)
    distinct = len({ids[: i + 1] for _, ids in trace for i in range(len(ids))})
    print(
        f"{args.trace}: {len(trace)} requests, {blocks} prompt blocks of {TRACE_BLOCK_TOKENS} "
        f"tokens, {distinct} distinct ({distinct * TRACE_BLOCK_TOKENS / 1e6:.1f} M tokens)"
    )
    d = reuse_distances(trace)
    if d.size:
        p = np.percentile(d, [25, 50, 75, 90])
        print(
            "reuse distance of re-used blocks (stamps = block touches): p25/p50/p75/p90 = "
            + " / ".join(f"{x * TRACE_BLOCK_TOKENS / 1e6:.2f} M tokens" for x in p)
        )
    print("\n| LRU cache (M tokens) | prompt tokens hit |\n|---:|---:|")
    for s in (float(x) for x in args.sizes.split(",")):
        cap = max(1, int(s * 1e6 / TRACE_BLOCK_TOKENS))
        print(f"| {s:g} | {100 * lru_hit_rate(trace, cap):.1f} % |", flush=True)
    print(f"| unbounded | {100 * lru_hit_rate(trace, None):.1f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
