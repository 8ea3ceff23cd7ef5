"""Fidelity: the simulator vs the real engine on the same replay, on this machine.

Replays the first requests of the Mooncake trace, shrunk to the tiny model (every 512-token
trace block becomes 32 tokens, so prefix sharing is kept; outputs are cut), open-loop at the
trace's arrival times (compressed), into one real `mainsail.workers.engine.Engine` (CPU, one
thread), measuring TTFT and finish times on the wall clock. Then simulates the same replay on
one simulated worker with the ``cpu-tiny`` profile (fitted by bench/sim_calibrate_engine.py)
and prints both side by side with their ratio. Target (issue 6): within 25 %.

    .venv/bin/python bench/sim_fidelity.py --requests 200 --time-scale 4
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mainsail.sim.calibrate import profile_from_measurements
from mainsail.sim.prompts import PromptHasher, trace_block_tokens
from mainsail.sim.simulation import SimSettings, run_policy
from mainsail.sim.traces import TraceRequest, load_trace, scale_trace
from mainsail.spec.kvhash import chain_hashes
from mainsail.workers.checkpoint.generator import ensure_checkpoint
from mainsail.workers.engine import Engine, EngineRequest, SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sim_calibrate_engine import calibrate, engine_config  # type: ignore[import-not-found]

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


def replay_real(trace: list[TraceRequest], timeout_s: float) -> dict[str, list[float]]:
    """Open-loop replay into one engine; TTFT/E2E from each request's scheduled arrival."""
    engine = Engine(ensure_checkpoint("llama"), engine_config())
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    params = {
        i: SamplingParams(temperature=0.0, max_tokens=r.output_tokens, ignore_eos=True)
        for i, r in enumerate(trace)
    }
    busy = 0.0
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
            continue
        step_start = time.perf_counter()
        outs = engine.step()
        busy += time.perf_counter() - step_start
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
    }


def _ratio(sim: float, real: float) -> float:
    return sim / real if real else math.nan


def one_repeat(
    trace: list[TraceRequest], threads: int, salt: int, timeout_s: float, weighting: str
) -> dict[str, float]:
    """Calibrate afresh, replay for real, simulate with that calibration; the figures."""
    t_cal = time.perf_counter()
    doc = calibrate(engine_config(), 1, threads, salt)
    profile, quality = profile_from_measurements(doc, weighting)
    cal_s = time.perf_counter() - t_cal
    real = replay_real(trace, timeout_s)
    run = run_policy(
        "round-robin",
        trace,
        profile,
        SimSettings(workers=1, block_size=BLOCK, max_model_len=2048),
        TinyHasher(BLOCK),
    )
    sim_ttft = [r.ttft for r in run.requests]
    sim_e2e = [r.e2e for r in run.requests]
    sim_end = max(r.finished for r in run.requests)
    out_tokens = sum(r.output_tokens for r in trace)
    sim_hits = sum(r.cached_tokens for r in run.requests)
    return {
        "calibration_s": cal_s,
        "fit_total_ratio": quality["total_time_ratio"],
        "real_ttft_p50": float(np.percentile(real["ttft"], 50)),
        "sim_ttft_p50": float(np.percentile(sim_ttft, 50)),
        "real_ttft_p90": float(np.percentile(real["ttft"], 90)),
        "sim_ttft_p90": float(np.percentile(sim_ttft, 90)),
        "real_ttft_mean": statistics.fmean(real["ttft"]),
        "sim_ttft_mean": statistics.fmean(sim_ttft),
        "real_e2e_p50": float(np.percentile(real["e2e"], 50)),
        "sim_e2e_p50": float(np.percentile(sim_e2e, 50)),
        "real_tok_s": out_tokens / real["end"][0],
        "sim_tok_s": out_tokens / sim_end,
        "real_req_s": len(trace) / real["end"][0],
        "sim_req_s": len(trace) / sim_end,
        "real_busy": real["busy"][0],
        "sim_busy": run.busy_s[0],
        "real_hits": real["hit_tokens"][0],
        "sim_hits": float(sim_hits),
    }


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


def report(results: list[dict[str, float]], trace: list[TraceRequest], threads: int) -> None:
    """Markdown table: medians over repeats and every repeat's sim/real ratio."""
    print(
        f"{len(trace)} requests over {trace[-1].arrival_s:.1f} s, one worker, {threads} "
        f"thread(s), {len(results)} repeats (each calibrated afresh right before its replay)"
    )
    print("| metric | real (median) | sim (median) | sim / real per repeat | median ratio |")
    print("|---|---:|---:|---|---:|")
    for label, key, scale in ROWS:
        reals = [r[f"real_{key}"] for r in results]
        sims = [r[f"sim_{key}"] for r in results]
        ratios = [_ratio(r[f"sim_{key}"], r[f"real_{key}"]) for r in results]
        print(
            f"| {label} | {statistics.median(reals) * scale:.1f} | "
            f"{statistics.median(sims) * scale:.1f} | "
            f"{', '.join(f'{x:.2f}' for x in ratios)} | {statistics.median(ratios):.2f} |"
        )
    cal = ", ".join(f"{r['fit_total_ratio']:.2f}" for r in results)
    print(f"calibration fit predicted/measured total step time per repeat: {cal}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--time-scale", type=float, default=4.0)
    ap.add_argument("--max-output", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (engine and fit)")
    ap.add_argument("--timeout", type=float, default=180.0, help="per live replay")
    ap.add_argument("--weighting", choices=["absolute", "relative"], default="absolute")
    args = ap.parse_args()
    if args.repeats < 1:
        raise ValueError("--repeats must be >= 1")
    torch.set_num_threads(args.threads)
    trace = shrink(
        scale_trace(
            load_trace("mooncake", limit=args.requests),
            time_scale=args.time_scale,
            jitter_s=3.0 / args.time_scale,
        ),
        args.max_output,
    )
    results = []
    for rep in range(args.repeats):
        res = one_repeat(trace, args.threads, 10 * rep, args.timeout, args.weighting)
        print(
            f"repeat {rep + 1}: calibration {res['calibration_s']:.0f} s, TTFT p50 sim/real "
            f"{_ratio(res['sim_ttft_p50'], res['real_ttft_p50']):.2f}, busy sim/real "
            f"{_ratio(res['sim_busy'], res['real_busy']):.2f}",
            flush=True,
        )
        results.append(res)
    report(results, trace, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
