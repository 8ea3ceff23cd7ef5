"""Elastic expert parallelism: scale-up time vs restarting the worker, and throughput while
the expert degree changes.

On the generated tiny Mixtral (CPU, gloo, two shared cores: the figures say what the code
path costs, not what GPUs would do). Each round: an engine on 1 expert rank serves a steady
closed-loop load (``--in-flight`` greedy requests of ``--tokens`` tokens, replaced as they
finish); we measure tokens/s for ``--steady`` seconds, then ask for 2 expert ranks and keep
serving: scale-up time is request -> first step on the new placement, and the window's
tokens/s is compared with steady state. Then back to 1 rank. A restart is timed as building
a fresh engine with 2 expert ranks (ranks started, weights loaded) — what a worker restart
with the new degree costs before it can serve, without the router's re-registration.
Medians over ``--rounds``. Usage: `python bench/elastic_ep.py [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time

import ray

from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.engine import Engine, EngineConfig, EngineRequest, SamplingParams


def _serve(
    engine: Engine,
    seconds: float,
    in_flight: int,
    tokens: int,
    ids: itertools.count,
    until_switched: bool = False,
) -> tuple[float, float]:
    """Closed-loop load for ``seconds`` (or until the pending resize switched); returns
    (tokens/s, elapsed)."""
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    runner = engine.sharded
    assert runner is not None
    start, made = time.monotonic(), 0
    while True:
        elapsed = time.monotonic() - start
        if until_switched:
            resize = runner.resizing
            if resize is not None and resize.switched is not None:
                break
        elif elapsed >= seconds:
            break
        metrics = engine.metrics()
        for _ in range(in_flight - metrics.running - metrics.waiting):
            n = next(ids)
            engine.add_request(
                EngineRequest(f"r{n}", [3 + (n * 7 + k) % 400 for k in range(12)], params)
            )
        made += sum(len(o.new_token_ids) for o in engine.step())
    elapsed = time.monotonic() - start
    return made / elapsed, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steady", type=float, default=8.0)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    model = ensure_checkpoint("mixtral")
    config = EngineConfig(max_model_len=128, max_num_seqs=8, num_threads=1)
    ids = itertools.count()
    scale_up, restart, fraction, steady_rates, window_rates = [], [], [], [], []
    engine = Engine(model, EngineConfig(**{**config.__dict__, "expert_parallel": 1}))
    try:
        for _ in range(args.rounds):
            steady, _ = _serve(engine, args.steady, args.in_flight, args.tokens, ids)
            engine.scale_experts(2)
            window, _ = _serve(engine, 0, args.in_flight, args.tokens, ids, until_switched=True)
            runner = engine.sharded
            assert runner is not None and runner.resizing is not None
            resize = runner.resizing
            assert resize.switched is not None
            scale_up.append(resize.switched - resize.requested)
            steady_rates.append(steady)
            window_rates.append(window)
            fraction.append(window / steady)
            engine.scale_experts(1)
            _serve(engine, 0, args.in_flight, args.tokens, ids, until_switched=True)
            t0 = time.monotonic()
            fresh = Engine(model, EngineConfig(**{**config.__dict__, "expert_parallel": 2}))
            restart.append(time.monotonic() - t0)
            fresh.close()
    finally:
        engine.close()
        ray.shutdown()
    print(
        json.dumps(
            {
                "rounds": args.rounds,
                "scale_up_s_median": round(statistics.median(scale_up), 2),
                "restart_s_median": round(statistics.median(restart), 2),
                "steady_tokens_per_s_median": round(statistics.median(steady_rates), 1),
                "window_tokens_per_s_median": round(statistics.median(window_rates), 1),
                "window_fraction_of_steady_median": round(statistics.median(fraction), 3),
                "scale_up_s": [round(x, 2) for x in scale_up],
                "restart_s": [round(x, 2) for x in restart],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
