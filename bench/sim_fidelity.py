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
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mainsail.sim.cost import load_profile
from mainsail.sim.prompts import PromptHasher, trace_block_tokens
from mainsail.sim.simulation import SimSettings, run_policy
from mainsail.sim.traces import TraceRequest, load_trace, scale_trace
from mainsail.spec.kvhash import chain_hashes
from mainsail.workers.checkpoint.generator import ensure_checkpoint
from mainsail.workers.engine import Engine, EngineConfig, EngineRequest, SamplingParams

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
    config = EngineConfig(
        block_size=BLOCK, max_model_len=2048, max_num_seqs=32, max_batched_tokens=512
    )
    engine = Engine(ensure_checkpoint("llama"), config)
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


def _line(name: str, real: float, sim: float) -> str:
    ratio = sim / real if real else math.nan
    return f"| {name} | {real * 1000:.1f} | {sim * 1000:.1f} | {ratio:.2f} |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--time-scale", type=float, default=4.0)
    ap.add_argument("--max-output", type=int, default=48)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--gpu-profiles", type=Path, default=None, help="profiles YAML (cpu-tiny)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    trace = shrink(
        scale_trace(
            load_trace("mooncake", limit=args.requests),
            time_scale=args.time_scale,
            jitter_s=3.0 / args.time_scale,
        ),
        args.max_output,
    )
    real = replay_real(trace, args.timeout)
    run = run_policy(
        "round-robin",
        trace,
        load_profile("cpu-tiny", args.gpu_profiles),
        SimSettings(workers=1, block_size=BLOCK, max_model_len=2048),
        TinyHasher(BLOCK),
    )
    sim_ttft = [r.ttft for r in run.requests]
    sim_e2e = [r.e2e for r in run.requests]
    out_tokens = sum(r.output_tokens for r in trace)
    print(f"{len(trace)} requests over {trace[-1].arrival_s:.1f} s, one worker, cpu-tiny profile")
    print("| metric | real engine (ms) | simulator (ms) | sim / real |")
    print("|---|---:|---:|---:|")
    for name, fn in (("p50", 50), ("p90", 90)):
        print(_line(f"TTFT {name}", np.percentile(real["ttft"], fn), np.percentile(sim_ttft, fn)))
    print(_line("TTFT mean", statistics.fmean(real["ttft"]), statistics.fmean(sim_ttft)))
    print(_line("E2E p50", np.percentile(real["e2e"], 50), np.percentile(sim_e2e, 50)))
    real_tps = out_tokens / real["end"][0]
    sim_tps = out_tokens / max(r.finished for r in run.requests)
    print(f"| output tokens/s | {real_tps:.0f} | {sim_tps:.0f} | {sim_tps / real_tps:.2f} |")
    print(_line("engine busy time", real["busy"][0], run.busy_s[0]))
    sim_hits = sum(r.cached_tokens for r in run.requests)
    print(
        f"| prefix-hit tokens | {real['hit_tokens'][0]:.0f} | {sim_hits} | "
        f"{sim_hits / max(1.0, real['hit_tokens'][0]):.2f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
