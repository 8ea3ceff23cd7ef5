"""Time the real engine's steps on this machine and fit the simulator's cost model to them.

Runs `mainsail.workers.engine.Engine` on the tiny generated Llama checkpoint (CPU), times
``Engine.step()`` for controlled batches (single prefills of several lengths, chunked prefills
over a growing context, decode-only batches of several sizes), writes the measurements as the
JSON `mainsail.sim.calibrate` reads, fits a ``cpu-tiny`` profile and prints it with the fit's
error. The simulator itself never imports the engine; this script is the bridge.

    .venv/bin/python bench/sim_calibrate_engine.py --out out/sim_calibration
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from mainsail.sim.calibrate import profile_from_measurements
from mainsail.workers.checkpoint.generator import ensure_checkpoint
from mainsail.workers.engine import Engine, EngineConfig, EngineRequest, SamplingParams

BLOCK = 16
BUDGET = 512


def _prompt(n: int, salt: int) -> list[int]:
    g = torch.Generator().manual_seed(7919 * salt + n)
    return [int(t) for t in torch.randint(3, 500, (n,), generator=g)]


def _timed_step(engine: Engine) -> float:
    start = time.perf_counter()
    engine.step()
    return time.perf_counter() - start


def measure_prefills(engine: Engine, salt: int) -> list[dict[str, Any]]:
    """One request at a time: each step's chunk (n new tokens after c computed) is known."""
    rows: list[dict[str, Any]] = []
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    for length in (16, 64, 128, 256, 384, 512, 1024, 1536):
        rid = f"p{salt}-{length}"
        engine.add_request(EngineRequest(rid, _prompt(length, salt), params))
        done = 0
        while engine.has_unfinished():
            n = min(BUDGET, length - done)
            seconds = _timed_step(engine)
            if n > 0:
                rows.append(
                    {
                        "prefill_tokens": n,
                        "attn_pairs": n * (done + n / 2),
                        "prefill_chunks": 1,
                        "decode_seqs": 0,
                        "decode_context": 0,
                        "seconds": seconds,
                    }
                )
                done += n
    return rows


def measure_decodes(engine: Engine, salt: int) -> list[dict[str, Any]]:
    """Batches of B requests: after their prefills, each step decodes all B (known context)."""
    rows: list[dict[str, Any]] = []
    new_tokens = 24
    grid = [(64, b) for b in (1, 2, 4, 8, 16, 32)] + [
        (p, b) for p in (512, 1024) for b in (1, 4, 16)
    ]
    for prompt_len, batch in grid:
        params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
        for i in range(batch):
            rid = f"d{salt}-{prompt_len}-{batch}-{i}"
            engine.add_request(EngineRequest(rid, _prompt(prompt_len, 100 * salt + i), params))
        produced: dict[str, int] = {}
        for _ in range(10_000):  # prefill phase: until every request has its first token
            if len(produced) == batch:
                break
            for out in engine.step():
                produced[out.request_id] = out.completion_tokens
        while engine.has_unfinished() and max(produced.values()) < new_tokens - 1:
            context = sum(prompt_len + n for n in produced.values())
            start = time.perf_counter()
            outs = engine.step()
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "prefill_tokens": 0,
                    "attn_pairs": 0.0,
                    "decode_seqs": batch,
                    "decode_context": context,
                    "seconds": seconds,
                }
            )
            for out in outs:
                produced[out.request_id] = out.completion_tokens
        for _ in range(10_000):
            if not engine.has_unfinished():
                break
            engine.step()
    return rows


def _drain(engine: Engine) -> None:
    for _ in range(100_000):
        if not engine.has_unfinished():
            return
        engine.step()


def measure_multi_prefills(engine: Engine, salt: int) -> list[dict[str, Any]]:
    """Several short prompts admitted together: one step with one chunk per prompt, which
    separates the per-sequence cost from the per-token and per-step ones."""
    rows: list[dict[str, Any]] = []
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    for count, length in ((2, 32), (4, 32), (8, 32), (16, 16), (2, 128), (4, 96), (8, 48)):
        for i in range(count):
            rid = f"m{salt}-{count}-{length}-{i}"
            engine.add_request(EngineRequest(rid, _prompt(length, 70_000 + 100 * salt + i), params))
        rows.append(
            {
                "prefill_tokens": count * length,
                "attn_pairs": count * length * length / 2,
                "prefill_chunks": count,
                "decode_seqs": 0,
                "decode_context": 0,
                "seconds": _timed_step(engine),
            }
        )
        _drain(engine)
    return rows


def measure_mixed(engine: Engine, salt: int) -> list[dict[str, Any]]:
    """A prompt's chunk in the same step as running decodes (what a new request's first step
    is on a busy worker): decodes, their context and the chunk are all known."""
    rows: list[dict[str, Any]] = []
    long = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    one = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    prompt_len = 48
    for batch, length in ((4, 64), (8, 256), (16, 128), (24, 448), (8, 480), (16, 32)):
        for i in range(batch):
            rid = f"x{salt}-{batch}-{length}-{i}"
            prompt = _prompt(prompt_len, 80_000 + 100 * salt + i)
            engine.add_request(EngineRequest(rid, prompt, long))
        produced: dict[str, int] = {}
        for _ in range(10_000):
            if len(produced) == batch:
                break
            for out in engine.step():
                produced[out.request_id] = out.completion_tokens
        for out in engine.step():  # one decode-only step so every sequence is decoding
            produced[out.request_id] = out.completion_tokens
        # The engine pads decode attention to the longest sequence ("padded").
        context = batch * (prompt_len + max(produced.values()) + 1)
        rid = f"xp{salt}-{batch}-{length}"
        engine.add_request(EngineRequest(rid, _prompt(length, 90_000 + salt), one))
        rows.append(
            {
                "prefill_tokens": length,
                "attn_pairs": length * length / 2,
                "prefill_chunks": 1,
                "decode_seqs": batch,
                "decode_context": context,
                "seconds": _timed_step(engine),
            }
        )
        for i in range(batch):
            engine.abort(f"x{salt}-{batch}-{length}-{i}")
        _drain(engine)
    return rows


def measure_after_idle(engine: Engine, salt: int) -> list[dict[str, Any]]:
    """Single short prefills, each after the engine sat idle, as at a replay's light load."""
    rows: list[dict[str, Any]] = []
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    for rep in range(3):
        for length in (16, 64, 128, 256):
            time.sleep(0.05)
            rid = f"i{salt}-{rep}-{length}"
            prompt = _prompt(length, 50_000 + 100 * salt + 10 * rep)
            engine.add_request(EngineRequest(rid, prompt, params))
            rows.append(
                {
                    "prefill_tokens": length,
                    "attn_pairs": length * length / 2,
                    "decode_seqs": 0,
                    "decode_context": 0,
                    "after_idle": 1,
                    "seconds": _timed_step(engine),
                }
            )
            for _ in range(10_000):
                if not engine.has_unfinished():
                    break
                engine.step()
    return rows


def engine_config() -> EngineConfig:
    """The worker configuration both calibration and the fidelity replay use."""
    return EngineConfig(
        block_size=BLOCK, max_model_len=2048, max_num_seqs=32, max_batched_tokens=BUDGET
    )


def measure_pass(engine: Engine, salt: int) -> list[dict[str, Any]]:
    """One pass over every kind of step (raw rows; `medians` folds repeats)."""
    steps = measure_prefills(engine, salt)
    steps += measure_decodes(engine, salt)
    steps += measure_multi_prefills(engine, salt)
    steps += measure_mixed(engine, salt)
    steps += measure_after_idle(engine, salt)
    return steps


def document(
    config: EngineConfig, threads: int, steps: list[dict[str, Any]], fold: bool = False
) -> dict[str, Any]:
    """The measurements document `mainsail.sim.calibrate` reads, from raw rows (``fold``:
    one row per step shape, its median, see `medians`)."""
    return {
        "name": "cpu-tiny",
        "description": f"Mainsail engine, tiny generated Llama, CPU, {threads} thread(s)",
        "sources": ["bench/sim_calibrate_engine.py on this machine"],
        "kv_capacity_tokens": config.total_kv_blocks * config.block_size,
        "max_num_seqs": config.max_num_seqs,
        "max_batched_tokens": config.max_batched_tokens,
        # The engine pads a decode batch's block tables to its longest sequence.
        "decode_attention": "padded",
        "steps": medians(steps) if fold else steps,
    }


def calibrate(config: EngineConfig, repeats: int, threads: int, salt: int = 0) -> dict[str, Any]:
    """Measurements document of a fresh engine with ``config`` (``repeats`` passes)."""
    engine = Engine(ensure_checkpoint("llama"), config)
    measure_prefills(engine, 999 + salt)  # warm-up, discarded
    steps: list[dict[str, Any]] = []
    for r in range(repeats):
        steps += measure_pass(engine, salt + r)
    return document(config, threads, steps)


def medians(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per distinct step shape, its median time over the repeats: a shared machine
    only ever adds time, in bursts, and a least-squares fit chases those bursts."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for step in steps:
        key = tuple(sorted((k, v) for k, v in step.items() if k != "seconds"))
        groups.setdefault(key, []).append(step)
    return [
        {**rows[0], "seconds": statistics.median(r["seconds"] for r in rows), "samples": len(rows)}
        for rows in groups.values()
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/sim_calibration"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    doc = calibrate(engine_config(), args.repeats, args.threads)
    steps = doc["steps"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "measurements.json").write_text(json.dumps(doc, indent=1) + "\n")
    profile, quality = profile_from_measurements(doc)
    med = statistics.median(s["seconds"] for s in steps)
    print(f"{len(steps)} steps measured, median step {med * 1000:.2f} ms")
    for name in (
        "step_overhead_s",
        "token_s",
        "attn_pair_s",
        "kv_read_s",
        "idle_wake_s",
        "seq_s",
        "decode_batch_s",
    ):
        print(f"  {name:16s} {getattr(profile, name):.3e}")
    print(
        f"fit: median relative error {100 * quality['median_rel_error']:.1f} %, "
        f"p90 {100 * quality['p90_rel_error']:.1f} %, predicted / measured total time "
        f"{quality['total_time_ratio']:.2f}"
    )
    print(f"measurements: {args.out / 'measurements.json'}")
    print(f"fit a profile file: python -m mainsail.sim.calibrate {args.out / 'measurements.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
