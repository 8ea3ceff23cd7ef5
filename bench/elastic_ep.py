"""Elastic expert parallelism: throughput during a scaling window as a fraction of steady
state, scale-up and scale-down, with and without a warm spare rank; scale-up time vs
restarting the worker.

On the generated tiny Mixtral (CPU, gloo, two shared cores: the figures say what the code
path costs, not what GPUs would do). One engine (``expert_parallel`` 1, max ``--max``)
serves a closed-loop load (``--in-flight`` greedy requests of ``--tokens`` tokens,
replaced as they finish). One round of a variant, all under that load:

    steady at 1 rank (S s) | scale up: window (W s from the request) | settle |
    steady at 2 ranks (S s) | scale down: window (W s) | settle | steady at 1 rank (S s)

The window fraction (``fraction``) is the tokens served in the ``W`` seconds that start at
the scale request, divided by the tokens the worker serves in steady state over the same
span: the old degree's steady tokens/s (measured just before) until the switch, the new
degree's (measured just after the window, once everything has settled) from the switch
on. So a window loses only to what scaling itself costs — the joining rank's start and
weight load competing for the cores, the switch pause, the next warm spare started after
the switch — and not to the new degree being slower or faster in steady state (on two CPU
cores 2 expert ranks serve slower than 1: one more gloo hop per MoE layer; on GPUs it is
the other way round). ``vs_old`` / ``vs_new`` divide by one degree's steady state alone.
``W`` (``--window``) must hold all of the scaling work: each window says whether the
switch and the next spare's start fell inside it (``done_in_window``); windows where not
are reported and left out of the medians only if ``--strict``.

Settle: serve until the resize switched and the warm spares wanted are started and
imported, then 1 s more. The variants (``warm_spares`` 1 = a spare rank process is started
and idle before the round, the default while ``expertParallel.max`` exceeds the degree; 0 =
the joining rank's process is started when scaling is asked for) alternate round by round
inside one run (A, B, A, B, ...), so a change in the machine's load hits both. A restart is
timed once per round pair: building a fresh engine with 2 expert ranks (ranks started,
weights loaded), what a worker restart with the new degree costs before it can serve.
Prints every window, then medians per variant and direction with the 1-minute load
average. Usage: `python bench/elastic_ep.py [--rounds 5] [--window 20] [--steady 8]
[--max 2] [--variants warm_spare no_spare]`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from dataclasses import dataclass, field

import ray

from mainsail.cli.local.ray_start import start_local_ray
from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.engine import Engine, EngineConfig, EngineRequest, SamplingParams
from mainsail.workers.parallel import ShardedRunner

VARIANTS = {"warm_spare": 1, "no_spare": 0}
SPARE_WAIT_S = 180.0
SETTLE_S = 1.0
POLL_WAIT_S = 0.02
RANK_CPU = {"CPU": 0.5}


@dataclass
class Load:
    """The closed-loop client and the engine it drives; every step is recorded."""

    engine: Engine
    in_flight: int
    tokens: int
    ids: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def runner(self) -> ShardedRunner:
        runner = self.engine.sharded
        assert runner is not None
        return runner

    def step(self) -> tuple[float, int]:
        """Top the load up, run one step; (step seconds, tokens made)."""
        params = SamplingParams(temperature=0.0, max_tokens=self.tokens, ignore_eos=True)
        metrics = self.engine.metrics()
        for _ in range(self.in_flight - metrics.running - metrics.waiting):
            n = next(self.ids)
            prompt = [3 + (n * 7 + k) % 400 for k in range(12)]
            self.engine.add_request(EngineRequest(f"r{n}", prompt, params))
        t0 = time.monotonic()
        made = sum(len(o.new_token_ids) for o in self.engine.step())
        return time.monotonic() - t0, made

    def steady(self, seconds: float) -> float:
        """Tokens/s over ``seconds``."""
        start, made = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            made += self.step()[1]
        return made / (time.monotonic() - start)

    def settled(self) -> bool:
        """The last resize switched (or failed) and the warm spares wanted are imported."""
        runner = self.runner
        resize = runner.resizing
        if resize is not None and resize.switched is None and resize.error is None:
            return False
        spares = runner.spares
        if len(spares) < runner.spares_wanted():
            return False
        if not spares:
            return True
        # Never block: a spare whose Ray worker is still starting answers only once it runs,
        # and waiting for it here would stall the load (the worker itself never waits).
        refs = [s.actor.ready.remote() for s in spares]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=POLL_WAIT_S)
        return len(done) == len(refs) and all(ray.get(done))

    def settle(self) -> None:
        deadline = time.monotonic() + SPARE_WAIT_S
        while not self.settled() and time.monotonic() < deadline:
            for _ in range(10):
                self.step()
        end = time.monotonic() + SETTLE_S
        while time.monotonic() < end:
            self.step()

    def window(self, target: int, seconds: float) -> dict[str, float]:
        """Ask for ``target`` ranks and serve ``seconds``: tokens, when the switch and the
        settling (spares started) happened, the longest step."""
        steps: list[float] = []
        start, made, done_at = time.monotonic(), 0, float("nan")
        self.engine.scale_experts(target)
        resize = self.runner.resizing
        assert resize is not None
        polled = start
        while (elapsed := time.monotonic() - start) < seconds:
            took, n = self.step()
            steps.append(took)
            made += n
            if done_at != done_at and time.monotonic() - polled > 0.2:  # NaN: not yet
                polled = time.monotonic()
                if self.settled():
                    done_at = polled - start
        assert resize.error is None, resize.error
        switched = (resize.switched or float("inf")) - resize.requested
        return {
            "tokens": made,
            "elapsed": elapsed,
            "switch_at_s": switched,
            "done_at_s": done_at,
            "longest_step_s": max(steps),
            "median_step_s": statistics.median(steps),
        }


def scored(window: dict[str, float], old: float, new: float) -> dict[str, float]:
    """The window against steady state: old degree's tokens/s until the switch, new one's
    after it (``fraction``); against each alone; serving seconds lost."""
    elapsed, at = window["elapsed"], min(window["switch_at_s"], window["elapsed"])
    expected = old * at + new * (elapsed - at)
    fraction = window["tokens"] / expected
    rate = window["tokens"] / elapsed
    return {
        "fraction": fraction,
        "vs_old": rate / old,
        "vs_new": rate / new,
        "lost_s": elapsed * (1 - fraction),
        "switch_at_s": window["switch_at_s"],
        "done_at_s": window["done_at_s"],
        "done_in_window": float(window["done_at_s"] <= elapsed),
        "longest_step_s": window["longest_step_s"],
        "median_step_s": window["median_step_s"],
        "steady_old": old,
        "steady_new": new,
        "load1": os.getloadavg()[0],
    }


def set_spares(load: Load, spares: int) -> None:
    """Keep ``spares`` warm spare ranks, and wait until they are started and imported."""
    load.runner.warm_spares = spares
    load.runner.refill_spares()
    load.settle()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant")
    parser.add_argument("--window", type=float, default=20.0, help="W, seconds")
    parser.add_argument("--steady", type=float, default=8.0, help="each steady phase, seconds")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--max", type=int, default=2, help="expertParallel.max")
    parser.add_argument("--strict", action="store_true", help="medians of done windows only")
    parser.add_argument("--no-restart", action="store_true", help="skip the restart timing")
    args = parser.parse_args()
    start_local_ray(2, node_ip_address="127.0.0.1", progress=lambda m: print(m, flush=True))
    model = ensure_checkpoint("mixtral")
    config = EngineConfig(max_model_len=128, max_num_seqs=8, num_threads=1, rank_resources=RANK_CPU)
    windows: dict[tuple[str, str], list[dict[str, float]]] = {}
    restart: list[float] = []
    engine = Engine(
        model,
        EngineConfig(**{**config.__dict__, "expert_parallel": 1, "expert_parallel_max": args.max}),
    )
    load = Load(engine, args.in_flight, args.tokens)
    w, steady = args.window, args.steady
    try:
        load.settle()
        for round_ in range(args.rounds):
            for name in args.variants:
                set_spares(load, VARIANTS[name])
                one = load.steady(steady)
                up = load.window(2, w)
                load.settle()
                two = load.steady(steady)
                down = load.window(1, w)
                load.settle()
                one_after = load.steady(steady)
                for direction, win, old, new in (
                    ("up", up, one, two),
                    ("down", down, two, one_after),
                ):
                    row = scored(win, old, new)
                    windows.setdefault((name, direction), []).append(row)
                    shown = {k: round(v, 3) for k, v in row.items()}
                    print(f"round {round_} {name} {direction}", shown, flush=True)
            if not args.no_restart:
                t0 = time.monotonic()
                fresh = Engine(model, EngineConfig(**{**config.__dict__, "expert_parallel": 2}))
                restart.append(time.monotonic() - t0)
                fresh.close()
    finally:
        engine.close()
        ray.shutdown()

    keys = ["fraction", "vs_old", "vs_new", "lost_s", "switch_at_s", "done_at_s"]
    keys += ["longest_step_s", "median_step_s", "steady_old", "steady_new"]
    medians: dict[str, dict[str, float | int]] = {}
    for (name, direction), rows in windows.items():
        kept = [r for r in rows if r["done_in_window"]] if args.strict else rows
        summary: dict[str, float | int] = {
            k: round(statistics.median(r[k] for r in kept), 3) for k in keys if kept
        }
        summary["windows"] = len(kept)
        summary["done_in_window"] = sum(int(r["done_in_window"]) for r in rows)
        medians[f"{name} {direction}"] = summary
    loads = [r["load1"] for rows in windows.values() for r in rows]
    print(
        json.dumps(
            {
                "window_s": w,
                "steady_s": steady,
                "rounds": args.rounds,
                "expert_parallel_max": args.max,
                "restart_s_median": round(statistics.median(restart), 2) if restart else None,
                "medians": medians,
                "fractions": {
                    f"{n} {d}": [round(r["fraction"], 3) for r in rows]
                    for (n, d), rows in windows.items()
                },
                "load1": {
                    "min": round(min(loads), 1),
                    "median": round(statistics.median(loads), 1),
                    "max": round(max(loads), 1),
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
