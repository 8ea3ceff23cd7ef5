"""Mixed load with malformed requests: valid traffic must not notice them.

A real router and real workers (engine on the generated tiny checkpoint, in this process,
credentials on) take a mix of valid requests (HTTP whole and streamed, gRPC) with a fraction
of malformed ones (bad JSON, out-of-range numbers, values a worker would refuse, wrong keys,
oversized heads; `tests/support/mixed_load.py`) for `--minutes`, bounded by `--max-requests`
too. Reports valid successes and failures, malformed 5xx, valid latency p50/p99 and
throughput; exits non-zero if any valid request failed, any malformed one got a 5xx, or a
worker was evicted. The CI-sized run is `tests/security/test_mixed_load.py`.
Usage: `python bench/malformed_mix.py [--minutes 10] [--malformed 0.05] [--concurrency 8]`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.fleet import CLIENT_KEYS, MODEL, fleet
from support.mixed_load import MixResult, Target, run_mix

from mainsail.workers.checkpoint import ensure_checkpoint


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values) or [0.0]
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(args: argparse.Namespace) -> int:
    async with fleet(ensure_checkpoint("llama"), workers=args.workers) as f:
        target = Target(f.http, f.grpc, MODEL, CLIENT_KEYS[0])

        async def tick(r: MixResult) -> None:
            print(f"  {r.valid_ok} valid ok, {len(r.valid_failures)} failed", flush=True)

        result = await run_mix(
            target,
            duration_s=args.minutes * 60,
            max_requests=args.max_requests,
            concurrency=args.concurrency,
            malformed_fraction=args.malformed,
            seed=args.seed,
            on_tick=tick if args.verbose else None,
        )
        evicted = {f"w{i}" for i in range(args.workers)} - f.worker_ids()
    valid = sum(n for k, n in result.sent.items() if k in ("http", "http-stream", "grpc"))
    malformed = sum(result.sent.values()) - valid
    print(
        f"\nMixed load, {result.seconds:.0f} s, concurrency {args.concurrency}, "
        f"{args.workers} workers (tiny checkpoint, real engine), {100 * args.malformed:.0f}% "
        "malformed.\n"
    )
    print("| valid sent | valid ok | valid failed | malformed sent | malformed 5xx | "
          "valid p50 ms | valid p99 ms | valid req/s | workers evicted |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {valid} | {result.valid_ok} | {len(result.valid_failures)} | {malformed} | "
        f"{len(result.malformed_server_errors)} | {1000 * _pct(result.latencies, 0.5):.1f} | "
        f"{1000 * _pct(result.latencies, 0.99):.1f} | {result.valid_ok / result.seconds:.1f} | "
        f"{len(evicted)} |"
    )
    kinds = {
        k: n for k, n in sorted(result.sent.items()) if k not in ("http", "http-stream", "grpc")
    }
    print("\nmalformed kinds sent:", kinds)
    for failure in result.valid_failures[:10]:
        print("valid failure:", failure)
    for failure in result.malformed_server_errors[:10]:
        print("malformed 5xx:", failure)
    ok = not result.valid_failures and not result.malformed_server_errors and not evicted
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--malformed", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    return asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
