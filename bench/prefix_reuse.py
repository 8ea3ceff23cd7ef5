"""Time to first token with 90 % of the prompt already cached vs a cold prompt.

For each prompt length, on one engine (tiny generated Llama, one prefill chunk per prompt):
cold = TTFT of a prompt whose blocks are nowhere in the cache; warm = TTFT of a prompt whose
first 90 % equals a prompt served just before (its blocks are cached). The target is that
warm TTFT is roughly proportional to the uncached 10 %, i.e. warm/cold well below 1.

    .venv/bin/python bench/prefix_reuse.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mainsail.workers.checkpoint import generate_checkpoint
from mainsail.workers.engine import Engine, EngineConfig, EngineRequest, SamplingParams

ONE = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)


def tokens(n: int, seed: int) -> list[int]:
    return torch.randint(3, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def ttft(engine: Engine, rid: str, prompt: list[int]) -> tuple[float, int]:
    start = time.perf_counter()
    engine.add_request(EngineRequest(rid, prompt, ONE))
    for _ in range(10_000):
        for out in engine.step():
            if out.request_id == rid and out.new_token_ids:
                elapsed = time.perf_counter() - start
                while engine.has_unfinished():
                    engine.step()
                return elapsed, out.cached_tokens
    raise RuntimeError("no first token")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = generate_checkpoint(
        "llama", Path(tempfile.gettempdir()) / "mainsail-bench" / "llama"
    )
    config = EngineConfig(
        max_model_len=4096, max_num_seqs=8, max_batched_tokens=4096, num_kv_blocks=2048
    )
    engine = Engine(model_dir, config)
    ttft(engine, "warm-up", tokens(256, seed=1))
    print(f"{'prompt':>7} {'cached':>7} {'cold ms':>9} {'warm ms':>9} {'warm/cold':>10}")
    for length in (512, 1024, 2048, 4000):
        cold_s, warm_s, cached = [], [], 0
        for r in range(args.repeats):
            seed = length * 100 + r
            prefix = tokens(length * 9 // 10, seed)
            cold_s.append(ttft(engine, f"cold-{length}-{r}", tokens(length, seed + 50_000))[0])
            ttft(engine, f"seed-{length}-{r}", prefix + tokens(length - len(prefix), seed + 1))
            t, cached = ttft(
                engine, f"warm-{length}-{r}", prefix + tokens(length - len(prefix), seed + 2)
            )
            warm_s.append(t)
        cold, warm = statistics.median(cold_s) * 1e3, statistics.median(warm_s) * 1e3
        print(f"{length:>7} {cached:>7} {cold:>9.1f} {warm:>9.1f} {warm / cold:>10.2f}")


if __name__ == "__main__":
    main()
