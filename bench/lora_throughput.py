"""Engine throughput with LoRA adapters: a batch of N requests with 0, 1 or 4 distinct adapters.

Runs the real engine on a generated checkpoint (CPU, float32, one torch thread) and reports
generated tokens per second (median over ``--repeats``) for:

* ``base (no adapters loaded)``: the engine as before LoRA;
* ``base (4 loaded)``: adapters resident but unused: should cost nothing;
* ``1 adapter`` / ``4 adapters``: every request uses an adapter (round-robin over 1 or 4).

Run under the shared lock: ``flock /tmp/mainsail-bench.lock .venv/bin/python
bench/lora_throughput.py``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mainsail.workers.checkpoint import ensure_checkpoint, generate_adapter
from mainsail.workers.engine import Engine, EngineConfig, EngineRequest, SamplingParams


def _run(
    engine: Engine, adapters: list[str | None], prompt_len: int, new_tokens: int, salt: int
) -> float:
    """Generated tokens/s for fresh prompts (``salt`` differs per run: no prefix hits)."""
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    gen = torch.Generator().manual_seed(salt)
    for i, adapter in enumerate(adapters):
        prompt = torch.randint(3, 512, (prompt_len,), generator=gen).tolist()
        engine.add_request(EngineRequest(f"r{i}", prompt, params, adapter=adapter))
    start = time.perf_counter()
    tokens = 0
    while engine.has_unfinished():
        tokens += sum(len(o.new_token_ids) for o in engine.step())
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = ensure_checkpoint("llama", size=args.size)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {
            f"a{i}": generate_adapter(model, Path(tmp) / f"a{i}", args.rank, seed=i)
            for i in range(4)
        }
        cases: list[tuple[str, dict[str, Path], list[str | None]]] = [
            ("base (no adapters loaded)", {}, [None]),
            ("base (4 loaded)", dirs, [None]),
            ("1 adapter", dirs, ["a0"]),
            ("4 adapters", dirs, ["a0", "a1", "a2", "a3"]),
        ]
        n = args.requests
        print(
            f"llama-{args.size}, {n} requests x ({args.prompt_len} prompt + {args.new_tokens} "
            f"new) tokens, rank {args.rank}, CPU float32, 1 thread; tokens/s (median of "
            f"{args.repeats})"
        )
        for label, loaded, names in cases:
            config = EngineConfig(
                max_model_len=256, max_num_seqs=n, max_batched_tokens=512, num_threads=1,
                adapters=loaded,
            )  # fmt: skip
            engine = Engine(model, config)
            per_request = [names[i % len(names)] for i in range(n)]
            _run(engine, per_request[:4], args.prompt_len, 4, salt=1000)  # warm-up
            rates = [
                _run(engine, per_request, args.prompt_len, args.new_tokens, salt=r)
                for r in range(args.repeats)
            ]
            print(f"  {label:28s} {statistics.median(rates):9.1f}  (runs: "
                  + ", ".join(f"{r:.0f}" for r in rates) + ")")  # fmt: skip


if __name__ == "__main__":
    main()
