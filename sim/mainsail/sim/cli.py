"""``mainsail sim``: replay a trace through several routing policies and write a report.

Example::

    mainsail sim --trace mooncake --workers 16 --policy ours,round-robin \\
        --rate-scale 2 --duration 1800 --gpu h100 --out out/sim

writes ``report.md``, ``summary.json``, ``latency_cdf.png`` and ``load_over_time.png`` into
``--out``. Every policy replays the same scaled trace on identical fresh workers, with the same
seed, so the rows of the report differ only by the policy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pydantic
import yaml

from mainsail.sim.cost import load_profile
from mainsail.sim.metrics import SLOTargets, summarise
from mainsail.sim.policies import POLICY_NAMES
from mainsail.sim.prompts import PromptHasher
from mainsail.sim.report import write_report
from mainsail.sim.simulation import RunResult, SimSettings, run_policy
from mainsail.sim.traces import TRACE_FILES, default_jitter_s, load_trace, scale_trace
from mainsail.spec.routing_profile import RoutingProfile

DEFAULT_POLICIES = "ours,prefix-hash,least-loaded,round-robin,random"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (shared by ``python -m mainsail.sim`` and ``mainsail sim``)."""
    p = argparse.ArgumentParser(prog="mainsail sim", description=__doc__.splitlines()[0])
    p.add_argument("--trace", choices=sorted(TRACE_FILES), default="mooncake")
    p.add_argument("--workers", type=int, default=8, help="simulated workers (unified role)")
    p.add_argument(
        "--policy",
        default=DEFAULT_POLICIES,
        help=f"comma-separated, from: {', '.join(POLICY_NAMES)}",
    )
    p.add_argument("--rate-scale", type=float, default=1.0, help="superpose X trace copies")
    p.add_argument("--time-scale", type=float, default=1.0, help="compress time S-fold")
    p.add_argument("--duration", type=float, default=None, help="seconds of trace to replay")
    p.add_argument("--jitter", type=float, default=None, help="arrival jitter, s (trace default)")
    p.add_argument("--limit", type=int, default=None, help="read only the first N trace rows")
    p.add_argument("--gpu", default="h100", help="profile name in the GPU profiles file")
    p.add_argument("--gpu-profiles", type=Path, default=None, help="alternative profiles YAML")
    p.add_argument(
        "--routing",
        type=Path,
        default=None,
        help="YAML of a RoutingProfile (as under spec.router.profile) for `ours`",
    )
    p.add_argument("--block-size", type=int, default=64, help="engine KV block, tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ttft-slo-ms", type=float, default=2000.0)
    p.add_argument("--ttft-slo-per-1k-ms", type=float, default=100.0)
    p.add_argument("--tpot-slo-ms", type=float, default=100.0)
    p.add_argument("--sample-every", type=float, default=10.0, help="load sample period, s")
    p.add_argument("--data-dir", type=Path, default=None, help="trace directory")
    p.add_argument("--out", type=Path, default=Path("out/sim"))
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def _routing(path: Path | None) -> RoutingProfile:
    """The default profile, or the one a YAML file describes (ValueError if invalid)."""
    if path is None:
        return RoutingProfile()
    try:
        return RoutingProfile.model_validate(yaml.safe_load(path.read_text()) or {})
    except (OSError, pydantic.ValidationError, yaml.YAMLError) as exc:
        raise ValueError(f"--routing {path}: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    """Runs the simulation; returns a process exit code."""
    args = build_parser().parse_args(argv)
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICY_NAMES]
    if unknown or not policies:
        print(f"unknown policy {unknown}; known: {', '.join(POLICY_NAMES)}", file=sys.stderr)
        return 2
    try:
        gpu = load_profile(args.gpu, args.gpu_profiles)
        settings = SimSettings(
            workers=args.workers,
            block_size=args.block_size,
            seed=args.seed,
            sample_every_s=args.sample_every,
            routing=_routing(args.routing),
        )
        slo = SLOTargets(
            ttft_s=args.ttft_slo_ms / 1000,
            ttft_per_1k_tokens_s=args.ttft_slo_per_1k_ms / 1000,
            tpot_s=args.tpot_slo_ms / 1000,
        )
        hasher = PromptHasher(args.block_size, settings.hash_seed)
        raw = load_trace(args.trace, args.data_dir, args.limit)
        jitter = default_jitter_s(args.trace) if args.jitter is None else args.jitter
        trace = scale_trace(
            raw,
            rate_scale=args.rate_scale,
            time_scale=args.time_scale,
            jitter_s=jitter,
            duration_s=args.duration,
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"mainsail sim: {exc}", file=sys.stderr)
        return 2
    if not trace:
        print("mainsail sim: no request left after scaling and --duration", file=sys.stderr)
        return 2

    span = trace[-1].arrival_s - trace[0].arrival_s
    print(f"{args.trace}: {len(trace)} requests over {span:.0f} s, {args.workers} x {gpu.name}")
    runs: list[RunResult] = []
    summaries = []
    t0 = time.perf_counter()
    for name in policies:
        run = run_policy(name, trace, gpu, settings, hasher)
        summary = summarise(run, slo)
        runs.append(run)
        summaries.append(summary)
        print(
            f"  {name:13s} SLO {100 * summary.slo_attainment:5.1f} %  TTFT p50/p99 "
            f"{summary.ttft[0]:6.2f}/{summary.ttft[2]:6.2f} s  hit {100 * summary.hit_rate:4.1f} %"
            f"  spread {summary.served_max_over_mean:.2f}  ({run.wall_s:.1f} s)"
        )
    setup: dict[str, object] = {
        "trace": f"{args.trace} ({len(trace)} requests over {span:.0f} s; rate x"
        f"{args.rate_scale:g}, time /{args.time_scale:g}, jitter {jitter:g} s)",
        "cluster": f"{args.workers} workers, GPU profile `{gpu.name}` ({gpu.description})",
        "engine": f"block {args.block_size} tokens, {gpu.kv_capacity_tokens} KV tokens, "
        f"max_num_seqs {gpu.max_num_seqs}, max_batched_tokens {gpu.max_batched_tokens}",
        "ours": f"RoutingProfile {settings.routing.model_dump(by_alias=True)} via "
        "mainsail.router.scheduling.build_profile, GlobalKVIndex",
        "seed": args.seed,
        "total simulation wall time": f"{time.perf_counter() - t0:.1f} s",
    }
    path = write_report(args.out, summaries, slo, setup)
    if not args.no_plots:
        from mainsail.sim.plots import plot_latency_cdfs, plot_load_over_time

        plot_latency_cdfs(runs, args.out / "latency_cdf.png")
        plot_load_over_time(runs, args.out / "load_over_time.png")
    print(f"report: {path}")
    return 0
