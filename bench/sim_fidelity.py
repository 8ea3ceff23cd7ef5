"""Fidelity: the simulator vs the real engine on the same replay, on this machine.

Replays the first requests of the Mooncake trace, shrunk to the tiny model (every 512-token
trace block becomes 32 tokens, so prefix sharing is kept; outputs are cut), open-loop at the
trace's arrival times (compressed), into one real `mainsail.workers.engine.Engine` (CPU, one
thread), measuring TTFT and finish times on the wall clock. Then simulates the same replay on
one simulated worker and prints both side by side with their ratio. Target (issue 6): within
25 %.

Two calibrations of the simulator's cost model, both made in the same repeat right before the
measured replay, so the machine's load at the time hits calibration and replay alike:

- ``in-situ``: replay the *next* slice of the trace (other requests, same rate) into a fresh
  engine, record every step's shape and time (`Engine.last_step`) and fit the model to those
  steps. The measured slice is never used for fitting, so the comparison stays out-of-sample.
  This is how one would calibrate from a production worker's step log.
- ``synthetic``: controlled back-to-back batches (bench/sim_calibrate_engine.py).

    .venv/bin/python bench/sim_fidelity.py --requests 200 --time-scale 4
    .venv/bin/python bench/sim_fidelity.py --time-scale 16     # saturating: throughput-bound
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mainsail.sim.calibrate import profile_from_measurements
from mainsail.sim.cost import GPUProfile, attn_pairs
from mainsail.sim.prompts import PromptHasher, trace_block_tokens
from mainsail.sim.simulation import SimSettings, run_policy
from mainsail.sim.traces import TraceRequest, load_trace, scale_trace
from mainsail.spec.kvhash import chain_hashes
from mainsail.workers.checkpoint.generator import ensure_checkpoint
from mainsail.workers.engine import Engine, EngineRequest, SamplingParams, StepShape

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sim_calibrate_engine import (  # type: ignore[import-not-found]
    calibrate,
    engine_config,
    measure_prefills,
)

SHRINK = 16  # 512-token trace blocks become 32-token blocks
BLOCK = 16


def tiny_tokens(block_ids: Sequence[int], n: int) -> list[int]:
    """Prompt of the shrunk trace: 32 tokens per trace block, valid ids of the tiny vocab."""
    out: list[int] = []
    for b in block_ids:
        out.extend(3 + t % 497 for t in trace_block_tokens(b)[: 512 // SHRINK])
    return out[:n]


class TinyHasher(PromptHasher):
    """Block hashes of the shrunk prompts (what the real engine computes from the tokens)."""

    def block_hashes(
        self, block_ids: Sequence[int], input_tokens: int, namespace: int = 0
    ) -> list[int]:
        return chain_hashes(tiny_tokens(block_ids, input_tokens), BLOCK)


def shrink(trace: list[TraceRequest], max_out: int) -> list[TraceRequest]:
    return [
        TraceRequest(
            r.arrival_s,
            max(BLOCK, min(1900, r.input_tokens // SHRINK)),
            max(1, min(max_out, r.output_tokens // 8)),
            r.block_ids,
        )
        for r in trace
    ]


def step_row(shape: StepShape, after_idle: bool) -> dict[str, Any]:
    """One real step as a calibration measurement (`mainsail.sim.calibrate` format)."""
    contexts = list(shape.decode_contexts)
    return {
        "prefill_tokens": sum(n for n, _ in shape.prefill),
        "attn_pairs": sum(attn_pairs(n, c) for n, c in shape.prefill),
        "prefill_chunks": len(shape.prefill),
        "decode_seqs": len(contexts),
        # The engine pads decode attention to the batch's longest sequence.
        "decode_context": len(contexts) * max(contexts) if contexts else 0,
        "after_idle": int(after_idle),
        "seconds": shape.seconds,
    }


def replay_real(trace: list[TraceRequest], timeout_s: float) -> dict[str, Any]:
    """Open-loop replay into one engine; TTFT/E2E from each request's scheduled arrival.

    Also returns every step's shape and time (``steps``), for the in-situ calibration.
    """
    engine = Engine(ensure_checkpoint("llama"), engine_config())
    measure_prefills(engine, 999)  # warm-up (first calls into torch are slow), not timed
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    params = {
        i: SamplingParams(temperature=0.0, max_tokens=r.output_tokens, ignore_eos=True)
        for i, r in enumerate(trace)
    }
    busy = 0.0
    steps: list[dict[str, Any]] = []
    idle = True
    t0 = time.perf_counter()
    nxt = 0
    while nxt < len(trace) or engine.has_unfinished():
        now = time.perf_counter() - t0
        if now > timeout_s:
            raise TimeoutError(f"real replay exceeded {timeout_s} s")
        while nxt < len(trace) and trace[nxt].arrival_s <= now:
            r = trace[nxt]
            tokens = tiny_tokens(r.block_ids, r.input_tokens)
            engine.add_request(EngineRequest(str(nxt), tokens, params[nxt]))
            nxt += 1
        if not engine.has_unfinished():
            time.sleep(max(0.0, min(0.01, trace[nxt].arrival_s - now)))
            idle = True
            continue
        step_start = time.perf_counter()
        outs = engine.step()
        busy += time.perf_counter() - step_start
        if engine.last_step is not None:
            steps.append(step_row(engine.last_step, idle))
            idle = False
        for out in outs:
            stamp = time.perf_counter() - t0
            if out.new_token_ids and out.request_id not in first:
                first[out.request_id] = stamp
            if out.finished:
                done[out.request_id] = stamp
    ids = [str(i) for i in range(len(trace))]
    return {
        "ttft": [first[i] - trace[int(i)].arrival_s for i in ids],
        "e2e": [done[i] - trace[int(i)].arrival_s for i in ids],
        "end": [max(done.values())],
        "busy": [busy],
        "hit_tokens": [float(engine.metrics().prefix_hit_tokens)],
        "steps": steps,
    }


def _ratio(sim: float, real: float) -> float:
    return sim / real if real else math.nan


MODES = ("in-situ", "synthetic")


def fit_profile(
    mode: str,
    calibration_slice: list[TraceRequest],
    threads: int,
    salt: int,
    timeout_s: float,
    weighting: str,
) -> tuple[GPUProfile, dict[str, float]]:
    """The cost model fitted by ``mode`` (see the module docstring), and its fit quality."""
    doc = calibrate(engine_config(), 1, threads, salt) if mode == "synthetic" else None
    if doc is None:
        template = calibrate_template()
        steps = replay_real(calibration_slice, timeout_s)["steps"]
        doc = {**template, "steps": steps}
    return profile_from_measurements(doc, weighting)


def calibrate_template() -> dict[str, Any]:
    """The synthetic calibration's document without its steps (engine limits, attention)."""
    config = engine_config()
    return {
        "name": "cpu-tiny",
        "description": "Mainsail engine, tiny generated Llama, CPU, fitted in situ",
        "sources": ["bench/sim_fidelity.py: steps of a live replay on this machine"],
        "kv_capacity_tokens": config.total_kv_blocks * config.block_size,
        "max_num_seqs": config.max_num_seqs,
        "max_batched_tokens": config.max_batched_tokens,
        "decode_attention": "padded",
    }


def simulate(trace: list[TraceRequest], profile: GPUProfile) -> dict[str, float]:
    """The simulator's figures for ``trace`` on one worker with ``profile``."""
    run = run_policy(
        "round-robin",
        trace,
        profile,
        SimSettings(workers=1, block_size=BLOCK, max_model_len=2048),
        TinyHasher(BLOCK),
    )
    ttft = [r.ttft for r in run.requests]
    end = max(r.finished for r in run.requests)
    out_tokens = sum(r.output_tokens for r in trace)
    return {
        "ttft_p50": float(np.percentile(ttft, 50)),
        "ttft_p90": float(np.percentile(ttft, 90)),
        "ttft_mean": statistics.fmean(ttft),
        "e2e_p50": float(np.percentile([r.e2e for r in run.requests], 50)),
        "tok_s": out_tokens / end,
        "req_s": len(trace) / end,
        "busy": run.busy_s[0],
        "hits": float(sum(r.cached_tokens for r in run.requests)),
    }


def measure(trace: list[TraceRequest], timeout_s: float) -> dict[str, float]:
    """The real engine's figures for ``trace`` (same keys as `simulate`)."""
    real = replay_real(trace, timeout_s)
    out_tokens = sum(r.output_tokens for r in trace)
    end = real["end"][0]
    return {
        "ttft_p50": float(np.percentile(real["ttft"], 50)),
        "ttft_p90": float(np.percentile(real["ttft"], 90)),
        "ttft_mean": statistics.fmean(real["ttft"]),
        "e2e_p50": float(np.percentile(real["e2e"], 50)),
        "tok_s": out_tokens / end,
        "req_s": len(trace) / end,
        "busy": real["busy"][0],
        "hits": real["hit_tokens"][0],
    }


def one_repeat(
    trace: list[TraceRequest],
    calibration_slice: list[TraceRequest],
    modes: Sequence[str],
    threads: int,
    salt: int,
    timeout_s: float,
    weighting: str,
) -> dict[str, dict[str, float]]:
    """Calibrate (each mode) right before the measured replay, then simulate it per mode."""
    profiles = {}
    for mode in modes:
        t_cal = time.perf_counter()
        profile, quality = fit_profile(mode, calibration_slice, threads, salt, timeout_s, weighting)
        profiles[mode] = profile
        print(
            f"  {mode} calibration {time.perf_counter() - t_cal:.0f} s, fit median relative "
            f"error {100 * quality['median_rel_error']:.0f} %",
            flush=True,
        )
    out = {"real": measure(trace, timeout_s)}
    for mode, profile in profiles.items():
        out[mode] = simulate(trace, profile)
    return out


ROWS = (
    ("TTFT p50 (ms)", "ttft_p50", 1000.0),
    ("TTFT p90 (ms)", "ttft_p90", 1000.0),
    ("TTFT mean (ms)", "ttft_mean", 1000.0),
    ("E2E p50 (ms)", "e2e_p50", 1000.0),
    ("output tokens/s", "tok_s", 1.0),
    ("completed requests/s", "req_s", 1.0),
    ("engine busy time (s)", "busy", 1.0),
    ("prefix-hit tokens", "hits", 1.0),
)


def report(
    results: list[dict[str, dict[str, float]]],
    modes: Sequence[str],
    trace: list[TraceRequest],
    threads: int,
) -> None:
    """Markdown table: medians over repeats and every repeat's sim/real ratio, per mode."""
    print(
        f"{len(trace)} requests over {trace[-1].arrival_s:.1f} s, one worker, {threads} "
        f"thread(s), {len(results)} repeats (each calibrated afresh right before its replay)"
    )
    head = " | ".join(f"sim {m} (median) | sim/real {m} per repeat | median" for m in modes)
    print(f"| metric | real (median) | {head} |")
    print("|---|---:|" + "---:|---|---:|" * len(modes))
    for label, key, scale in ROWS:
        reals = [r["real"][key] for r in results]
        cells = []
        for m in modes:
            sims = [r[m][key] for r in results]
            ratios = [_ratio(r[m][key], r["real"][key]) for r in results]
            cells.append(
                f"{statistics.median(sims) * scale:.1f} | "
                f"{', '.join(f'{x:.2f}' for x in ratios)} | {statistics.median(ratios):.2f}"
            )
        print(f"| {label} | {statistics.median(reals) * scale:.1f} | {' | '.join(cells)} |")


def rebase(trace: list[TraceRequest]) -> list[TraceRequest]:
    """The slice with its first arrival moved to time 0."""
    t0 = trace[0].arrival_s
    return [dataclasses.replace(r, arrival_s=r.arrival_s - t0) for r in trace]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--time-scale", type=float, default=4.0)
    ap.add_argument("--max-output", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (engine and fit)")
    ap.add_argument("--timeout", type=float, default=180.0, help="per live replay")
    ap.add_argument("--weighting", choices=["absolute", "relative"], default="absolute")
    ap.add_argument(
        "--calibration",
        choices=[*MODES, "both"],
        default="both",
        help="how the cost model is fitted before each measured replay (see the docstring)",
    )
    args = ap.parse_args()
    if args.repeats < 1 or args.requests < 10:
        raise ValueError("--repeats must be >= 1 and --requests >= 10")
    modes = list(MODES) if args.calibration == "both" else [args.calibration]
    torch.set_num_threads(args.threads)
    both = shrink(
        scale_trace(
            load_trace("mooncake", limit=2 * args.requests),
            time_scale=args.time_scale,
            jitter_s=3.0 / args.time_scale,
        ),
        args.max_output,
    )
    trace, calibration_slice = both[: args.requests], rebase(both[args.requests :])
    results = []
    for rep in range(args.repeats):
        print(f"repeat {rep + 1}:", flush=True)
        res = one_repeat(
            trace, calibration_slice, modes, args.threads, 10 * rep, args.timeout, args.weighting
        )
        print(
            "  TTFT p50 sim/real "
            + ", ".join(
                f"{m} {_ratio(res[m]['ttft_p50'], res['real']['ttft_p50']):.2f}" for m in modes
            ),
            flush=True,
        )
        results.append(res)
    report(results, modes, trace, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
