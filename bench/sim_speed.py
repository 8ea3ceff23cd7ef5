"""Simulator speed and memory: how long one hour of real traffic takes to simulate.

Targets (issue 6): one hour of the Mooncake trace on 64 simulated workers in < 60 s; 1,024
workers at 10x the trace's rate in < 10 min; peak memory < 2 GB. Each scenario runs in a fresh
subprocess so its peak RSS is its own. Round-robin runs in the same scenario as a baseline
(the cost of the event loop and workers without the router), so the ratio shows what the real
router code adds. Both wall time and the child's CPU time are printed: on a shared machine the
CPU time is the figure that says what the simulator costs.

    .venv/bin/python bench/sim_speed.py                 # both scenarios
    .venv/bin/python bench/sim_speed.py --only 64       # just the 64-worker hour
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SCENARIOS = {
    "64": {"workers": 64, "rate_scale": 1.0},
    "1024x10": {"workers": 1024, "rate_scale": 10.0},
}


def run_one(workers: int, rate_scale: float, policy: str, block_size: int) -> dict[str, float]:
    """Runs in the child process: one policy on one scenario; returns its figures."""
    from mainsail.sim.cost import load_profile
    from mainsail.sim.metrics import SLOTargets, summarise
    from mainsail.sim.prompts import PromptHasher
    from mainsail.sim.simulation import SimSettings, run_policy
    from mainsail.sim.traces import load_trace, scale_trace

    t0 = time.perf_counter()
    trace = scale_trace(load_trace("mooncake"), rate_scale=rate_scale, jitter_s=3.0)
    hasher = PromptHasher(block_size)
    load_s = time.perf_counter() - t0
    settings = SimSettings(workers=workers, block_size=block_size, sample_every_s=30.0)
    run = run_policy(policy, trace, load_profile("h100"), settings, hasher)
    s = summarise(run, SLOTargets())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_mb = usage.ru_maxrss / 1024
    return {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "requests": len(trace),
        "trace_span_s": trace[-1].arrival_s,
        "load_s": load_s,
        "sim_wall_s": run.wall_s,
        "peak_rss_mb": rss_mb,
        "decide_us": s.decide_us,
        "hit_rate": s.hit_rate,
        "slo": s.slo_attainment,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(SCENARIOS), default=None)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--policies", default="round-robin,ours")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        name, policy = args.child.split(":")
        sc = SCENARIOS[name]
        out = run_one(int(sc["workers"]), float(sc["rate_scale"]), policy, args.block_size)
        print(json.dumps(out))
        return 0
    names = [args.only] if args.only else list(SCENARIOS)
    print(f"block size {args.block_size}; H100 profile; Mooncake trace, 1 h")
    print(
        f"{'scenario':10s} {'policy':12s} {'requests':>8s} {'wall s':>8s} {'cpu s':>7s} "
        f"{'peak MB':>8s} {'µs/decision':>11s} {'hit':>6s} {'SLO':>6s}"
    )
    for name in names:
        base = None
        for policy in args.policies.split(","):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                f"{name}:{policy}",
                "--block-size",
                str(args.block_size),
            ]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            base = base or r["sim_wall_s"]
            print(
                f"{name:10s} {policy:12s} {r['requests']:8d} {r['sim_wall_s']:8.1f} "
                f"{r['cpu_s']:7.1f} "
                f"{r['peak_rss_mb']:8.0f} {r['decide_us']:11.0f} {100 * r['hit_rate']:5.1f}% "
                f"{100 * r['slo']:5.1f}%   (x{r['sim_wall_s'] / base:.1f} of first policy; "
                f"trace load+hasher {r['load_s']:.1f} s)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
