"""Elastic expert parallelism: scale-up time vs restarting the worker, and throughput while
the expert degree changes, with and without a warm spare rank.

On the generated tiny Mixtral (CPU, gloo, two shared cores: the figures say what the code
path costs, not what GPUs would do). One engine on 1 expert rank serves a steady closed-loop
load (``--in-flight`` greedy requests of ``--tokens`` tokens, replaced as they finish). Each
window: tokens/s for ``--steady`` seconds, then ask for 2 expert ranks and keep serving:
scale-up time is request -> first step on the new placement, and the window's tokens/s is
compared with the steady tokens/s measured just before it (``fraction``); ``fixed_fraction``
is the same over a fixed ``--window`` seconds from the request (or until the switch, if
later), so that variants whose windows differ in length compare on the same span; then back
to 1 rank. The
variants (``warm_spares`` of the runner: 1 = a spare rank process is started and idle
before the steady phase (the default while ``expertParallel.max`` exceeds the degree),
0 = the joining rank's process is started when scaling is asked for) alternate window by
window inside one run (A, B, A, B, ...), so a change in the machine's load hits both. A
restart is timed once per round as building a fresh engine with 2 expert ranks (ranks
started, weights loaded) — what a worker restart with the new degree costs before it can
serve, without the router's re-registration.
Prints medians per variant and the 1-minute load average seen at each window.
Usage: `python bench/elastic_ep.py [--rounds 4]`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time

import ray

from mainsail.cli.local.stack import init_ray_retrying
from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.engine import Engine, EngineConfig, EngineRequest, SamplingParams
from mainsail.workers.parallel import ShardedRunner

VARIANTS = {"warm_spare": 1, "no_spare": 0}
SPARE_WAIT_S = 120.0
RANK_CPU = {"CPU": 0.5}


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
            if resize is not None and (resize.switched is not None or resize.error):
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


def _set_spares(runner: ShardedRunner, spares: int) -> None:
    """Keep ``spares`` warm spare ranks, and wait until they are started and imported."""
    runner.warm_spares = spares
    runner.refill_spares()
    deadline = time.monotonic() + SPARE_WAIT_S
    while len(runner.spares) < runner.spares_wanted() and time.monotonic() < deadline:
        time.sleep(0.2)
    for spare in runner.spares:
        runner.ranks.renumber(spare, spare.rank)  # returns once its process has imported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steady", type=float, default=8.0)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--window", type=float, default=8.0)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    init_ray_retrying(
        lambda: ray.init(
            num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1"
        ),
        ray.shutdown,
        lambda message: print(message, flush=True),
    )
    model = ensure_checkpoint("mixtral")
    config = EngineConfig(max_model_len=128, max_num_seqs=8, num_threads=1, rank_resources=RANK_CPU)
    ids = itertools.count()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    restart: list[float] = []
    engine = Engine(
        model,
        EngineConfig(**{**config.__dict__, "expert_parallel": 1, "expert_parallel_max": 2}),
    )
    runner = engine.sharded
    assert runner is not None
    try:
        for _ in range(args.rounds):
            for name, spares in VARIANTS.items():
                _set_spares(runner, spares)
                steady, _ = _serve(engine, args.steady, args.in_flight, args.tokens, ids)
                engine.scale_experts(2)
                window, took = _serve(engine, 0, args.in_flight, args.tokens, ids, True)
                rest = max(0.0, args.window - took)
                after, _ = _serve(engine, rest, args.in_flight, args.tokens, ids)
                fixed = (window * took + after * rest) / max(took + rest, 1e-9)
                resize = runner.resizing
                assert resize is not None and resize.switched is not None, resize
                assert resize.prepared is not None
                runs[name].append(
                    {
                        "steady": steady,
                        "window": window,
                        "fraction": window / steady,
                        "fixed_fraction": fixed / steady,
                        "scale_up_s": resize.switched - resize.requested,
                        "switch_s": resize.switched - resize.prepared,
                        # serving time lost to the window: a short window with one slow step
                        # has a low fraction but loses little
                        "lost_s": (1 - window / steady) * (resize.switched - resize.requested),
                        "load1": os.getloadavg()[0],
                    }
                )
                print(name, {k: round(v, 3) for k, v in runs[name][-1].items()}, flush=True)
                engine.scale_experts(1)
                _serve(engine, 0, args.in_flight, args.tokens, ids, until_switched=True)
            t0 = time.monotonic()
            fresh = Engine(model, EngineConfig(**{**config.__dict__, "expert_parallel": 2}))
            restart.append(time.monotonic() - t0)
            fresh.close()
    finally:
        engine.close()
        ray.shutdown()

    def median(name: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs[name]), 3)

    keys = ("fraction", "fixed_fraction", "scale_up_s", "switch_s", "lost_s", "steady", "window")
    print(
        json.dumps(
            {
                "rounds": args.rounds,
                "restart_s_median": round(statistics.median(restart), 2),
                "medians": {name: {k: median(name, k) for k in keys} for name in VARIANTS},
                "fractions": {n: [round(r["fraction"], 3) for r in runs[n]] for n in VARIANTS},
                "load1": [round(r["load1"], 1) for n in VARIANTS for r in runs[n]],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
