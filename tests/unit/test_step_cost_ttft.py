"""The shared step cost model's per-sequence terms and its time-to-first-token replay
(`mainsail.spec.step_cost`): what admission predicts, step by step as the engine schedules."""

from __future__ import annotations

import random

import pytest

from mainsail.sim.calibrate import fit
from mainsail.spec import step_cost
from mainsail.spec.step_cost import StepCost, attn_pairs

pytestmark = pytest.mark.unit

C = StepCost(
    step_overhead_s=0.01,
    token_s=1e-4,
    attn_pair_s=1e-8,
    kv_read_s=1e-6,
    idle_wake_s=0.5,
    seq_s=1e-3,
    decode_batch_s=2e-3,
    max_num_seqs=8,
    max_batched_tokens=100,
)


def test_per_sequence_and_decode_batch_terms() -> None:
    base = C.step_overhead_s + 1e-4 * 53 + 1e-8 * 2000 + 1e-6 * 900
    # One chunk (the default with prefill tokens) and 3 decodes: 4 sequences, a decode batch.
    assert C.step_time(50, 2000.0, 3, 900) == pytest.approx(base + 4e-3 + 2e-3)
    assert C.step_time(50, 2000.0, 3, 900, prefill_chunks=5) == pytest.approx(base + 8e-3 + 2e-3)
    assert C.step_time(50, 0.0, 0, 0) == pytest.approx(0.01 + 5e-3 + 1e-3)
    assert C.decode_step_time(2, 10) == pytest.approx(0.01 + 2e-4 + 1e-5 + 2e-3 + 2e-3)
    # Profiles without the terms (the GPU ones) are unchanged.
    plain = C.model_copy(update={"seq_s": 0.0, "decode_batch_s": 0.0})
    assert plain.step_time(50, 2000.0, 3, 900) == pytest.approx(base)


def test_alone_on_an_idle_worker_it_is_the_chunked_prefill_time() -> None:
    for tokens, cached in ((1, 0), (100, 0), (250, 0), (250, 64)):
        assert C.time_to_first_token(0, tokens, cached, 0, 0) == pytest.approx(
            C.prefill_time(tokens, cached)
        )
    woken = C.time_to_first_token(0, 250, 0, 0, 0, after_idle=True)
    assert woken == pytest.approx(C.prefill_time(250) + C.idle_wake_s)


def test_prompts_ahead_share_steps_and_then_decode() -> None:
    # Two prompts of 60 ahead, then the request's 50; budget 100, no decodes at first.
    first = C.step_time(100, attn_pairs(60, 0) + attn_pairs(40, 0), 0, 0, prefill_chunks=2)
    # The first prompt got its token and decodes (context 60), leaving 99 tokens of budget:
    # the second prompt's last 20, then the request's 50.
    second = C.step_time(70, attn_pairs(20, 40) + attn_pairs(50, 0), 1, 60, prefill_chunks=2)
    got = C.time_to_first_token(120, 50, 0, 0, 0, ahead_prompts=2)
    assert got == pytest.approx(first + second)


def test_running_decodes_take_budget_and_time_from_every_step() -> None:
    # 40 running, but at most max_num_seqs (8) decode: 92 tokens of budget a step.
    got = C.time_to_first_token(0, 150, 0, 40, 4000)
    expected = C.step_time(92, attn_pairs(92, 0), 8, 4000) + C.step_time(
        58, attn_pairs(58, 92), 8, 4008
    )
    assert got == pytest.approx(expected)
    assert got > C.time_to_first_token(0, 150, 0, 0, 0)


def test_more_work_ahead_is_never_predicted_sooner() -> None:
    rng = random.Random(3)
    for _ in range(200):
        prompts = rng.randint(1, 10)
        length = rng.randint(1, 300)
        decodes, context = rng.randint(0, 8), rng.randint(0, 5000)
        own = rng.randint(1, 400)
        before = C.time_to_first_token(prompts * length, own, 0, decodes, context, prompts)
        after = C.time_to_first_token((prompts + 1) * length, own, 0, decodes, context, prompts + 1)
        assert after >= before


def test_a_long_backlog_is_extrapolated_close_to_the_full_replay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = (400_000, 300, 0, 4, 400)
    cut = C.time_to_first_token(*args, ahead_prompts=2000)
    monkeypatch.setattr(step_cost, "REPLAYED_STEPS", 10**6)
    full = C.time_to_first_token(*args, ahead_prompts=2000)
    assert cut == pytest.approx(full, rel=0.1)


def test_calibration_recovers_the_per_sequence_terms() -> None:
    rng = random.Random(5)
    rows = []
    for _ in range(80):
        kind = rng.choice(["prefill", "multi", "decode", "mixed"])
        chunks = rng.randint(2, 8) if kind == "multi" else int(kind in ("prefill", "mixed"))
        pre = chunks * rng.randint(8, 60)
        seqs = rng.randint(1, 8) if kind in ("decode", "mixed") else 0
        pairs = attn_pairs(pre, rng.randint(0, 200)) if pre else 0.0
        ctx = seqs * rng.randint(10, 900)
        rows.append(
            {
                "prefill_tokens": pre,
                "attn_pairs": pairs,
                "prefill_chunks": chunks,
                "decode_seqs": seqs,
                "decode_context": ctx,
                "seconds": C.step_time(pre, pairs, seqs, ctx, prefill_chunks=chunks),
            }
        )
    params, quality = fit(rows)
    assert params["seq_s"] == pytest.approx(C.seq_s, rel=1e-6)
    assert params["decode_batch_s"] == pytest.approx(C.decode_batch_s, rel=1e-6)
    assert params["step_overhead_s"] == pytest.approx(C.step_overhead_s, rel=1e-6)
    assert quality["p90_rel_error"] < 1e-6
