"""How well admission's TTFT prediction matches the real engine (issue 14).

The router refuses a request when `mainsail.spec.step_cost.StepCost.time_to_first_token` says
no worker can make its target; this checks that formula, with the simulator's fitted
``cpu-tiny`` profile, against `mainsail.workers.engine.Engine` on the tiny checkpoint (CPU,
``--threads``): for each scenario — ``decodes`` running sequences, ``ahead`` prompts queued
before it, then the measured request — the engine is driven step by step and the time from
adding the request to its first token is measured, and compared with the prediction from the
same numbers the router would see (prefill tokens queued ahead, the request's prompt, the
running decodes and the KV they hold). Prints per scenario the median measured and predicted
TTFT over ``--repeats`` and their ratio, then the median ratio — once with the shipped
``cpu-tiny`` profile and once with a profile fitted on this machine just before (the steps of
`bench/sim_calibrate_engine.py`, ``--calibrate-repeats`` rounds), since a shared machine's
speed drifts from the one the shipped profile was fitted on.

    .venv/bin/python bench/ttft_prediction.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch
from sim_calibrate_engine import document, engine_config, measure_pass

from mainsail.sim.calibrate import profile_from_measurements
from mainsail.sim.cost import load_profile
from mainsail.spec.step_cost import StepCost
from mainsail.workers.checkpoint.generator import ensure_checkpoint
from mainsail.workers.engine import Engine, EngineRequest, SamplingParams

# (running decodes, prompts queued ahead, tokens per queued prompt, the request's prompt)
SCENARIOS = [
    (0, 0, 0, 64),
    (0, 0, 0, 512),
    (0, 4, 256, 128),
    (0, 8, 512, 256),
    (4, 0, 0, 64),
    (8, 0, 0, 256),
    (8, 8, 64, 128),
    (16, 4, 256, 256),
    (24, 2, 512, 512),
]


def _prompt(n: int, salt: int) -> list[int]:
    g = torch.Generator().manual_seed(7919 * salt + n)
    return [int(t) for t in torch.randint(3, 500, (n,), generator=g)]


def measure(engine: Engine, scenario: tuple[int, int, int, int], salt: int) -> tuple[float, int]:
    """Measured TTFT of the scenario's request (s), and the KV tokens its decodes held."""
    decodes, ahead, ahead_len, prompt = scenario
    long = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    for i in range(decodes):
        engine.add_request(EngineRequest(f"d{salt}-{i}", _prompt(32, salt * 100 + i), long))
    scheduler = engine._scheduler  # a bench drives the engine by hand
    while decodes and (
        scheduler.waiting or any(s.num_tokens - s.num_computed != 1 for s in scheduler.running)
    ):
        engine.step()  # until every running sequence is decoding (its prefill done)
    held = engine.metrics().kv_blocks_used * engine.config.block_size
    one = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    # Prompts queued ahead go on decoding after their first token, as real requests do.
    after = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    for i in range(ahead):
        engine.add_request(EngineRequest(f"a{salt}-{i}", _prompt(ahead_len, salt * 10 + i), after))
    rid = f"r{salt}"
    start = time.perf_counter()
    engine.add_request(EngineRequest(rid, _prompt(prompt, salt + 7), one))
    ttft = 0.0
    while not ttft:
        for out in engine.step():
            if out.request_id == rid and out.new_token_ids:
                ttft = time.perf_counter() - start
    for i in range(decodes):
        engine.abort(f"d{salt}-{i}")
    for i in range(ahead):
        engine.abort(f"a{salt}-{i}")
    while engine.has_unfinished():
        engine.step()
    return ttft, held


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--calibrate-repeats", type=int, default=3, help="calibration passes (first repeats)"
    )
    ap.add_argument("--fold", action="store_true", help="fit step medians, not every step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    shipped = load_profile("cpu-tiny").step_cost()
    config = engine_config()
    engine = Engine(ensure_checkpoint("llama"), config)
    measure_pass(engine, 999)  # warm up (first calls into torch are slow)
    measure(engine, (2, 1, 64, 64), salt=999)
    # Calibration passes and scenarios interleaved on one engine, so the fit and the
    # measurements see the same machine (its speed drifts with the other jobs on it).
    steps: list[dict[str, Any]] = []
    measured: list[list[float]] = [[] for _ in SCENARIOS]
    held: list[list[int]] = [[] for _ in SCENARIOS]
    for r in range(args.repeats):
        if r < args.calibrate_repeats:
            steps += measure_pass(engine, r)
        for n, scenario in enumerate(SCENARIOS):
            ttft, kv = measure(engine, scenario, salt=1000 * n + r)
            measured[n].append(ttft)
            held[n].append(kv)
    fresh, quality = profile_from_measurements(
        document(config, args.threads, steps, fold=args.fold)
    )
    fitted = fresh.step_cost()
    terms = ("step_overhead_s", "token_s", "attn_pair_s", "kv_read_s", "seq_s", "decode_batch_s")
    print(
        "fitted now: "
        + ", ".join(f"{t} {getattr(fitted, t):.3g}" for t in terms)
        + f" (median step error {100 * quality['median_rel_error']:.0f} %)"
    )
    costs: dict[str, StepCost] = {"shipped": shipped, "fitted now": fitted}
    predicted: dict[str, list[list[float]]] = {name: [[] for _ in SCENARIOS] for name in costs}
    for n, (decodes, ahead, ahead_len, prompt) in enumerate(SCENARIOS):
        for kv in held[n]:
            for name, cost in costs.items():
                predicted[name][n].append(
                    cost.time_to_first_token(
                        prefill_ahead=ahead * ahead_len,
                        uncached_tokens=prompt,
                        cached_tokens=0,
                        decode_seqs=decodes,
                        decode_context=kv,
                        ahead_prompts=ahead,
                    )
                )
    ratios: dict[str, list[float]] = {name: [] for name in costs}
    print("decodes ahead x len  prompt   measured ms  predicted ms (shipped / fitted now)  ratio")
    for n, (decodes, ahead, ahead_len, prompt) in enumerate(SCENARIOS):
        m = statistics.median(measured[n])
        p = {name: statistics.median(v[n]) for name, v in predicted.items()}
        for name in costs:
            ratios[name].append(p[name] / m)
        print(
            f"{decodes:7d} {ahead:5d} x {ahead_len:3d}  {prompt:6d}   {1000 * m:11.1f}  "
            f"{1000 * p['shipped']:8.1f} / {1000 * p['fitted now']:6.1f}"
            f"{' ' * 18}{p['shipped'] / m:.2f} / {p['fitted now'] / m:.2f}"
        )
    for name, values in ratios.items():
        print(
            f"predicted/measured with the {name} profile: median {statistics.median(values):.2f}"
            f" (min {min(values):.2f}, max {max(values):.2f})"
        )
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
