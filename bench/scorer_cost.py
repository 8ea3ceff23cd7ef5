"""Host cost of one scorer per candidate worker, against cheap scorers timed in the same run.

Why: a scorer runs once per routing decision over every candidate, so a default scorer must
stay cheap at 1,000 workers (docs/scheduling.md's latency targets). This times `score` of the
`ttft`, `prefill-time` and `kv-prefix` scorers over the same synthetic candidates — loaded
workers (running decodes, waiting prompts, queued prefill tokens, KV held, a step cost model
and a KV cost model each, as the router's snapshots carry them) and a prompt cached to a
random depth on a random half of them — interleaved round by round so machine drift hits all
alike, and prints per worker count the median over ``--repeats`` rounds of the best of each
round's ``--calls`` (a shared machine only adds time) in µs per candidate, and its ratio to
`kv-prefix` and `prefill-time` measured in the same round.

    .venv/bin/python bench/scorer_cost.py [--workers 16,128,1024] [--repeats 15]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import time
from collections.abc import Sequence

from mainsail.router.scheduling import RequestInfo, SchedulingContext, WorkerSnapshot
from mainsail.router.scheduling.plugin import Scorer
from mainsail.router.scheduling.scorers.kv_prefix import KVPrefixScorer
from mainsail.router.scheduling.scorers.prefill_time import PrefillTimeScorer
from mainsail.router.scheduling.scorers.ttft import TTFTScorer
from mainsail.router.testing import idle_worker
from mainsail.sim.cost import load_profile
from mainsail.spec.kv_cost import FetchCostModel

BLOCK = 16
PROMPT = 4000


def candidates(n: int, rng: random.Random) -> list[WorkerSnapshot]:
    """``n`` loaded workers sharing one step cost model (as a router's fleet does)."""
    step = load_profile("h100").step_cost()
    kv = FetchCostModel(block_bytes=0, block_size=BLOCK)
    out = []
    for i in range(n):
        running, waiting = rng.randint(0, 200), rng.randint(0, 12)
        out.append(
            idle_worker(
                f"w{i}",
                running=running,
                waiting=waiting,
                outstanding=running + waiting + rng.randint(0, 3),
                max_num_seqs=256,
                max_model_len=32_768,
                kv_blocks_used=rng.randint(0, 20_000),
                kv_blocks_total=25_000,
                pending_prefill_tokens=waiting * rng.randint(100, 4000),
                kv_cost=kv,
                step_cost=step,
            )
        )
    return out


def context(workers: Sequence[WorkerSnapshot], rng: random.Random) -> SchedulingContext:
    blocks = PROMPT // BLOCK
    hits = {w.worker_id: rng.randint(0, blocks) for w in workers if rng.random() < 0.5}
    request = RequestInfo("r", tuple(range(blocks)), PROMPT, 256)
    return SchedulingContext(request, tuple(workers), hits, {})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="16,128,1024")
    ap.add_argument("--repeats", type=int, default=15, help="rounds; medians are over these")
    ap.add_argument("--calls", type=int, default=20, help="score calls per round (the best counts)")
    args = ap.parse_args()
    scorers: dict[str, Scorer] = {
        "ttft": TTFTScorer(),
        "prefill-time": PrefillTimeScorer(),
        "kv-prefix": KVPrefixScorer(),
    }
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    print(
        "workers  µs/candidate: ttft  prefill-time  kv-prefix"
        "   ttft / kv-prefix  ttft / prefill-time"
    )
    for n in (int(x) for x in args.workers.split(",")):
        rng = random.Random(n)
        workers = candidates(n, rng)
        ctx = context(workers, rng)
        per: dict[str, list[float]] = {name: [] for name in scorers}
        for _ in range(args.repeats):
            for name, scorer in scorers.items():  # interleaved: drift hits all alike
                best = math.inf  # best of the round's calls: a shared machine only adds time
                for _ in range(args.calls):
                    start = time.perf_counter()
                    scorer.score(ctx, workers)
                    best = min(best, time.perf_counter() - start)
                per[name].append(best / n * 1e6)
        ratio_kv = statistics.median(
            t / k for t, k in zip(per["ttft"], per["kv-prefix"], strict=True)
        )
        ratio_pt = statistics.median(
            t / p for t, p in zip(per["ttft"], per["prefill-time"], strict=True)
        )
        med = {name: statistics.median(v) for name, v in per.items()}
        print(
            f"{n:7d}  {med['ttft']:17.2f}  {med['prefill-time']:12.2f}  {med['kv-prefix']:9.2f}"
            f"   {ratio_kv:16.1f}  {ratio_pt:19.1f}"
        )
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
