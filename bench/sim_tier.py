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

    .venv/bin/python bench/sim_tier.py                       # ~10-20 min on a busy 2-core box
    .venv/bin/python bench/sim_tier.py --duration 1800 --policies tier-aware,device-only
"""

from __future__ import annotations

import argparse
import dataclasses
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--duration", type=float, default=None, help="seconds of trace (all)")
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--tiers", default="0,12.8", help="tier sizes, million tokens (0 = none)")
    ap.add_argument("--bandwidths", default="10,2.5", help="tier bandwidths, GB/s")
    ap.add_argument("--policies", default=",".join(POLICIES))
    args = ap.parse_args()
    slo = SLOTargets()
    gpu = load_profile("h100")
    hasher = PromptHasher(args.block_size)
    trace = scale_trace(load_trace("mooncake"), jitter_s=3.0, duration_s=args.duration)
    device_m = args.workers * gpu.kv_capacity_tokens / 1e6
    print(
        f"Mooncake: {len(trace)} requests on {args.workers} x H100 (device KV {device_m:g} M "
        f"tokens in all), block {args.block_size}; KV {gpu.kv_bytes_per_token} B/token"
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
            blocks = int(size * 1e6 / args.block_size)
            tier = TierSettings(capacity_blocks=blocks, bandwidth_bps=gbps * 1e9 or 1.0)
            what = f"tier {size:g} M tokens, {gbps:g} GB/s" if size else "no tier"
            print(f"| **{what}** | | | | | | |")
            for label in args.policies.split(","):
                policy, aware = POLICIES[label]
                if not size and label == "device-only":
                    continue  # the same as tier-aware without a tier
                settings = dataclasses.replace(base, tier=tier, tier_aware=aware)
                print(
                    _row(label, summarise(run_policy(policy, trace, gpu, settings, hasher), slo)),
                    flush=True,
                )
    print(f"\n(simulated in {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
