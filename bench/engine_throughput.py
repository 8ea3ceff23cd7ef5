"""Throughput of the Mainsail engine vs `transformers.generate` one request after another.

Same tiny generated Llama checkpoint, same greedy requests (mixed prompt lengths, a fixed
number of new tokens, EOS ignored), one process. For 1, 8 and 32 concurrent requests the
engine gets them all at once and steps until done; the baseline serves them one after
another with `generate` (the way a naive server would). Figures are medians over repeats.
Also prints peak RSS and the KV cache's memory (allocated, and peak in use).

    .venv/bin/python bench/engine_throughput.py [--repeats 3] [--new-tokens 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mainsail.workers.checkpoint import generate_checkpoint
from mainsail.workers.engine import Engine, EngineConfig, EngineRequest, SamplingParams


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(3, 512, (int(length),), generator=g).tolist()
        for length in torch.randint(16, 128, (n,), generator=g)
    ]


def run_engine(engine: Engine, batch: list[list[int]], new_tokens: int) -> tuple[float, int, int]:
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    start = time.perf_counter()
    for i, p in enumerate(batch):
        engine.add_request(EngineRequest(f"r{time.monotonic_ns()}-{i}", p, params))
    tokens = peak_blocks = 0
    for _ in range(100_000):
        if not engine.has_unfinished():
            break
        tokens += sum(len(o.new_token_ids) for o in engine.step())
        peak_blocks = max(peak_blocks, engine.metrics().kv_blocks_used)
    return time.perf_counter() - start, tokens, peak_blocks


def run_transformers(model: object, batch: list[list[int]], new_tokens: int) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = 0
    for p in batch:
        ids = torch.tensor([p])
        with torch.no_grad():
            out = model.generate(  # type: ignore[attr-defined]
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=2,
            )
        tokens += out.shape[1] - len(p)
    return time.perf_counter() - start, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--baseline-requests", type=int, default=8, help="requests per baseline run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    model_dir = generate_checkpoint(
        "llama", Path(tempfile.gettempdir()) / "mainsail-bench" / "llama"
    )
    engine = Engine(
        model_dir, EngineConfig(max_model_len=512, max_num_seqs=64, max_batched_tokens=512)
    )
    ref: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref.eval()
    run_engine(engine, prompts(4, seed=99), 8)  # warm-up
    run_transformers(ref, prompts(2, seed=99), 8)

    base = [
        run_transformers(ref, prompts(args.baseline_requests, seed=r), args.new_tokens)
        for r in range(args.repeats)
    ]
    base_tps = statistics.median(t / s for s, t in base)
    print(
        f"model {model_dir} | {args.new_tokens} new tokens/request | torch threads {args.threads}"
    )
    print(f"transformers generate, sequential: {base_tps:8.1f} tok/s (median of {args.repeats})")
    print(f"{'concurrent':>10} {'engine tok/s':>13} {'vs baseline':>12} {'peak KV in use':>15}")
    per_block = engine.kv_cache_bytes / engine.metrics().kv_blocks_total
    for n in (1, 8, 32):
        runs = [
            run_engine(engine, prompts(n, seed=r), args.new_tokens) for r in range(args.repeats)
        ]
        tps = statistics.median(t / s for s, t, _ in runs)
        peak = max(b for _, _, b in runs) * per_block / 2**20
        print(f"{n:>10} {tps:>13.1f} {tps / base_tps:>11.2f}x {peak:>12.2f} MiB")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"KV cache allocated: {engine.kv_cache_bytes / 2**20:.1f} MiB "
        f"({engine.metrics().kv_blocks_total} blocks); peak RSS {rss:.0f} MiB"
    )


if __name__ == "__main__":
    main()
