"""Tensor parallelism: engine step time at tp=2 against tp=1, on the same model and prompts.

Why: issue 13 asks for the figure, honestly. On the generated tiny Llama (2 layers, hidden
64), on CPU, with the ranks joined by gloo on a shared two-core machine, tp=2 is *not* a
speed-up and is not expected to be: every step pays a driver -> rank Ray call and gloo
all-reduces that cost far more than the matmuls they split. The figure says what the code
path GPUs use costs here (and that it runs), not what NCCL on GPUs would do.

Both engines are built once (tp=1 in this process, tp=2 as two Ray rank actors), then the
variants alternate inside each round (tp1, tp2, tp1, tp2, ...) so a change in the machine's
load hits both. Per round and variant it times ``Engine.step()``:

* decode at batch 1 and at batch 8: short prompts prefilled first (not timed), then
  ``--decode-steps`` decode steps, each timed;
* prefill: ``--prefills`` fresh prompts of ``--prefill-tokens`` tokens (distinct, so no
  prefix-cache hit), one per step, each fitting one step's token budget.

Prints medians per variant, the tp2/tp1 ratio and the 1-minute load averages seen. Bounded:
``--budget`` seconds of measuring (default 240; ``--quick``: 2 rounds, 60 s), checked
between rounds.
Usage: `python bench/tensor_parallel_step.py [--quick]`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import time

import ray

from mainsail.cli.local.ray_start import start_local_ray
from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.engine import Engine, EngineConfig, EngineRequest, SamplingParams

VOCAB_LOW, VOCAB_HIGH = 3, 500  # clear of the tiny tokenizer's special ids
CASES = ("decode_b1", "decode_b8", "prefill")


def _prompt(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(VOCAB_LOW, VOCAB_HIGH) for _ in range(n)]


def _timed_step(engine: Engine) -> float:
    t0 = time.perf_counter()
    for out in engine.step():
        if out.error is not None:
            raise RuntimeError(out.error)
    return time.perf_counter() - t0


def _decode(
    engine: Engine, batch: int, steps: int, rng: random.Random, ids: itertools.count[int]
) -> list[float]:
    """Times of ``steps`` decode steps at ``batch`` running sequences (prefill not timed)."""
    params = SamplingParams(temperature=0.0, max_tokens=steps + 2, ignore_eos=True)
    for _ in range(batch):
        engine.add_request(EngineRequest(f"d{next(ids)}", _prompt(rng, 12), params))
    _timed_step(engine)  # the batch's prefill (12 tokens each: one step)
    times = [_timed_step(engine) for _ in range(steps)]
    while engine.has_unfinished():
        _timed_step(engine)
    return times


def _prefill(
    engine: Engine, tokens: int, count: int, rng: random.Random, ids: itertools.count[int]
) -> list[float]:
    """Times of ``count`` steps, each prefilling one fresh ``tokens``-token prompt."""
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    times = []
    for _ in range(count):
        engine.add_request(EngineRequest(f"p{next(ids)}", _prompt(rng, tokens), params))
        times.append(_timed_step(engine))
        while engine.has_unfinished():
            _timed_step(engine)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--budget", type=float, default=240.0, help="seconds of measuring")
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--prefills", type=int, default=3)
    parser.add_argument("--prefill-tokens", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="2 rounds, 60 s budget")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.budget = min(args.rounds, 2), min(args.budget, 60.0)
    start_local_ray(2, node_ip_address="127.0.0.1", progress=lambda m: print(m, flush=True))
    model = ensure_checkpoint("llama")
    config = EngineConfig(
        max_model_len=args.prefill_tokens + 64,
        max_num_seqs=8,
        max_batched_tokens=max(512, args.prefill_tokens),
        num_threads=1,
    )
    t0 = time.monotonic()
    engines = {"tp1": Engine(model, config)}
    built = {"tp1": time.monotonic() - t0}
    times: dict[str, dict[str, list[float]]] = {v: {c: [] for c in CASES} for v in ("tp1", "tp2")}
    load1: list[float] = []
    rounds = 0
    try:
        t0 = time.monotonic()
        engines["tp2"] = Engine(model, EngineConfig(**{**config.__dict__, "tensor_parallel": 2}))
        built["tp2"] = time.monotonic() - t0
        print("built (s):", {k: round(v, 1) for k, v in built.items()}, flush=True)
        ids = itertools.count()
        for engine in engines.values():  # warm-up, not counted
            _decode(engine, 8, 4, random.Random(-1), ids)
            _prefill(engine, args.prefill_tokens, 1, random.Random(-2), ids)
        deadline = time.monotonic() + args.budget
        while rounds < args.rounds and time.monotonic() < deadline:
            for name, engine in engines.items():
                rng = random.Random(rounds)  # same prompts for both variants in a round
                got = {
                    "decode_b1": _decode(engine, 1, args.decode_steps, rng, ids),
                    "decode_b8": _decode(engine, 8, args.decode_steps, rng, ids),
                    "prefill": _prefill(engine, args.prefill_tokens, args.prefills, rng, ids),
                }
                for case, samples in got.items():
                    times[name][case] += samples
                load1.append(os.getloadavg()[0])
                print(
                    f"round {rounds} {name} median ms",
                    {c: round(statistics.median(got[c]) * 1e3, 2) for c in CASES},
                    f"load1 {load1[-1]:.1f}",
                    flush=True,
                )
            rounds += 1
    finally:
        for engine in engines.values():
            engine.close()
        ray.shutdown()

    medians = {v: {c: statistics.median(times[v][c]) * 1e3 for c in CASES} for v in times}
    rounded = {v: {c: round(m, 2) for c, m in ms.items()} for v, ms in medians.items()}
    print(
        json.dumps(
            {
                "model": "generated tiny Llama (2 layers, hidden 64), CPU float32, gloo",
                "rounds": rounds,
                "samples_per_variant": {c: len(times["tp1"][c]) for c in CASES},
                "median_step_ms": rounded,
                "tp2_over_tp1": {c: round(medians["tp2"][c] / medians["tp1"][c], 2) for c in CASES},
                "build_s": {k: round(v, 1) for k, v in built.items()},
                "load1": [round(x, 1) for x in load1],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
