"""Tier-aware vs device-only KV scoring when the working set exceeds device KV (simulator).

The Mooncake hour on a small H100 cluster: the devices' KV caches hold a fraction of the
trace's reuse distance (bench/kv_reuse.py), a shared Redis tier holds much more. Every worker
writes its blocks through to the tier and fetches a prompt's tier-held blocks when the one cost
model (`mainsail.spec.kv_cost`) says fetching beats recomputing, whatever the router does; the
router's scoring is what differs:

- tier-aware: the default profile with ``tier_hits`` (a tier-held prefix priced at its fetch);
- device-only: the same profile, told only what each device holds;
- least-work: fewest prompt tokens to prefill counting the worker's own device cache;
- round-robin.

Printed per tier size and bandwidth: TTFT p50/p90/p99, SLO attainment, and the prefix hit rate
split into device hits and tier fetches, so the gain shows in hits, not only in TTFT.

``--stores 1,4``: the tier as one store every worker shares, or as that many separate stores
(a Redis per rack: each serves a contiguous group of workers, and the tier's total size is
split between them), where a tier-held prefix is a fetch only for its own rack's workers —
the case tier-aware scoring exists for. ``--seeds N`` replays each case with N router/jitter
seeds, the variants interleaved per seed, and prints each run and the medians.

    .venv/bin/python bench/sim_tier.py                       # ~10-20 min on a busy 2-core box
    .venv/bin/python bench/sim_tier.py --duration 1800 --policies tier-aware,device-only
    .venv/bin/python bench/sim_tier.py --duration 1800 --tiers 12.8 --bandwidths 10 \
        --stores 1,4 --policies tier-aware,device-only --seeds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from mainsail.sim.cost import load_profile
from mainsail.sim.kvtier import TierSettings
from mainsail.sim.metrics import SLOTargets, Summary, summarise
from mainsail.sim.prompts import PromptHasher
from mainsail.sim.simulation import SimSettings, run_policy
from mainsail.sim.traces import load_trace, scale_trace

POLICIES = {
    "tier-aware": ("ours", True),
    "device-only": ("ours", False),
    "least-work": ("least-work", True),
    "round-robin": ("round-robin", True),
}


def _row(label: str, s: Summary) -> str:
    device = s.hit_rate - s.tier_hit_rate
    return (
        f"| {label} | {s.ttft[0]:.2f} / {s.ttft[1]:.2f} / {s.ttft[2]:.2f} | "
        f"{100 * s.ttft_attainment:.1f} % | {100 * s.slo_attainment:.1f} % | "
        f"{100 * s.hit_rate:.1f} % | {100 * device:.1f} % | {100 * s.tier_hit_rate:.1f} % |"
    )


def _median(runs: list[Summary]) -> Summary:
    """Field-wise medians of ``runs`` (TTFT percentiles each on their own)."""
    if len(runs) == 1:
        return runs[0]
    med = statistics.median
    return dataclasses.replace(
        runs[0],
        ttft=tuple(med(r.ttft[i] for r in runs) for i in range(3)),  # type: ignore[arg-type]
        ttft_attainment=med(r.ttft_attainment for r in runs),
        slo_attainment=med(r.slo_attainment for r in runs),
        hit_rate=med(r.hit_rate for r in runs),
        tier_hit_rate=med(r.tier_hit_rate for r in runs),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--duration", type=float, default=None, help="seconds of trace (all)")
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument(
        "--tiers", default="0,12.8", help="tier sizes in all, million tokens (0 = none)"
    )
    ap.add_argument("--bandwidths", default="10,2.5", help="tier bandwidths, GB/s")
    ap.add_argument("--stores", default="1", help="tier stores (1 = one shared by all workers)")
    ap.add_argument("--seeds", type=int, default=1, help="runs per case (medians printed)")
    ap.add_argument("--policies", default=",".join(POLICIES))
    args = ap.parse_args()
    slo = SLOTargets()
    gpu = load_profile("h100")
    hasher = PromptHasher(args.block_size)
    traces = [
        scale_trace(load_trace("mooncake"), jitter_s=3.0, duration_s=args.duration, seed=seed)
        for seed in range(args.seeds)
    ]
    device_m = args.workers * gpu.kv_capacity_tokens / 1e6
    print(
        f"Mooncake: {len(traces[0])} requests on {args.workers} x H100 (device KV {device_m:g} M "
        f"tokens in all), block {args.block_size}; KV {gpu.kv_bytes_per_token} B/token; "
        f"{args.seeds} seed(s)"
    )
    print(
        "\n| policy | TTFT p50 / p90 / p99 (s) | TTFT SLO met | TTFT+TPOT SLO met | prefix hit "
        "| of which device | of which tier |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    t0 = time.perf_counter()
    base = SimSettings(workers=args.workers, block_size=args.block_size)
    for size in (float(x) for x in args.tiers.split(",")):
        bandwidths = [float(x) for x in args.bandwidths.split(",")] if size else [0.0]
        for gbps in bandwidths:
            for stores in [int(x) for x in args.stores.split(",")] if size else [1]:
                blocks = int(size * 1e6 / args.block_size / stores)  # the total split
                tier = TierSettings(
                    capacity_blocks=blocks, bandwidth_bps=gbps * 1e9 or 1.0, stores=stores
                )
                what = f"tier {size:g} M tokens, {gbps:g} GB/s" if size else "no tier"
                if size and stores > 1:
                    what += f", {stores} stores of {size / stores:g} M"
                print(f"| **{what}** | | | | | | |")
                labels = [
                    label
                    for label in args.policies.split(",")
                    if size or label != "device-only"  # the same as tier-aware without a tier
                ]
                runs: dict[str, list[Summary]] = {label: [] for label in labels}
                for seed, trace in enumerate(traces):  # the variants interleaved per seed
                    for label in labels:
                        policy, aware = POLICIES[label]
                        settings = dataclasses.replace(base, tier=tier, tier_aware=aware, seed=seed)
                        summary = summarise(run_policy(policy, trace, gpu, settings, hasher), slo)
                        runs[label].append(summary)
                        if args.seeds > 1:
                            print(_row(f"{label} (seed {seed})", summary), flush=True)
                for label in labels:
                    name = f"{label}, median" if args.seeds > 1 else label
                    print(_row(name, _median(runs[label])), flush=True)
    print(f"\n(simulated in {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
