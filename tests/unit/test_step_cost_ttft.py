"""The shared step cost model's per-sequence terms and its time to first token
(`mainsail.spec.step_cost`): what admission and the `ttft` scorer predict, in closed form of
the steps the engine schedules, and monotone in every kind of work (Hypothesis)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.sim.calibrate import fit
from mainsail.sim.cost import load_profile
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
AWAKE = C.model_copy(update={"idle_wake_s": 0.0})  # no floor from waking (half a second in C)
CPU = load_profile("cpu-tiny").step_cost()  # padded decode attention, per-sequence terms
H100 = load_profile("h100").step_cost()


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
        assert AWAKE.time_to_first_token(0, tokens, cached, 0, 0) == pytest.approx(
            C.prefill_time(tokens, cached)
        )
        # A busy worker (not after idle) is never predicted sooner than an idle one.
        assert C.time_to_first_token(0, tokens, cached, 0, 0) == pytest.approx(
            C.prefill_time(tokens, cached) + C.idle_wake_s
        )
    woken = C.time_to_first_token(0, 250, 0, 0, 0, after_idle=True)
    assert woken == pytest.approx(C.prefill_time(250) + C.idle_wake_s)


def test_running_decodes_take_budget_and_time_from_every_step() -> None:
    """No prompts ahead: the closed form is the engine's steps exactly. 4 decodes take 4 of the
    100 tokens of every step, so 150 tokens need two steps, each with the decodes' share."""
    got = AWAKE.time_to_first_token(0, 150, 0, 4, 400)
    expected = C.step_time(96, attn_pairs(96, 0), 4, 400) + C.step_time(
        54, attn_pairs(54, 96), 4, 404
    )
    assert got == pytest.approx(expected)
    assert got > AWAKE.time_to_first_token(0, 150, 0, 0, 0)


def test_prompts_ahead_are_prefilled_first_and_then_decode() -> None:
    """Two prompts of 60 ahead, then 50: the engine's two steps (the first prompt decodes in
    the second), within the closed form's averaging of when prompts ahead join."""
    first = C.step_time(100, attn_pairs(60, 0) + attn_pairs(40, 0), 0, 0, prefill_chunks=2)
    second = C.step_time(70, attn_pairs(20, 40) + attn_pairs(50, 0), 1, 60, prefill_chunks=2)
    got = AWAKE.time_to_first_token(120, 50, 0, 0, 0, ahead_prompts=2)
    assert got == pytest.approx(first + second, rel=0.1)
    assert got > AWAKE.time_to_first_token(0, 50, 0, 0, 0)


def test_more_work_ahead_is_never_predicted_sooner() -> None:
    rng = random.Random(3)
    for _ in range(200):
        prompts = rng.randint(1, 10)
        length = rng.randint(1, 300)
        decodes, context = rng.randint(0, 8), rng.randint(0, 5000)
        own = rng.randint(1, 400)
        before = AWAKE.time_to_first_token(prompts * length, own, 0, decodes, context, prompts)
        after = AWAKE.time_to_first_token(
            (prompts + 1) * length, own, 0, decodes, context, prompts + 1
        )
        assert after >= before


# The three corners where the step replay this closed form replaced was not monotone
# (docs/benchmarks.md, "A TTFT scorer from the one step cost model").


def test_more_prompts_over_the_same_tokens_are_not_predicted_sooner() -> None:
    """(a) 1,200 tokens in 2 prompts or in 12: the worker does not say how they split, so
    their attention is the same and the extra prompts cost their chunks and decodes."""
    for model in (C, CPU, H100):
        few = model.time_to_first_token(1200, 300, 0, 2, 500, ahead_prompts=2)
        many = model.time_to_first_token(1200, 300, 0, 2, 500, ahead_prompts=12)
        assert many > few
        # A short prompt joining the queue never makes the first token sooner either.
        more = model.time_to_first_token(1210, 300, 0, 2, 500, ahead_prompts=13)
        assert more > many


def test_past_the_batch_limit_the_wait_for_a_free_slot_is_charged() -> None:
    """(b) At ``max_num_seqs`` (8) the engine admits no prompt until a sequence finishes:
    each missing slot costs at least a step of the full batch, so more running sequences,
    or more prompts ahead, never predict sooner past the limit."""
    times = [AWAKE.time_to_first_token(300, 100, 0, running, 800, ahead_prompts=3) for running in
             range(0, 14)]  # fmt: skip
    assert times == sorted(times)
    at_limit = AWAKE.time_to_first_token(0, 100, 0, 8, 800)
    full_step = C.step_time(0, 0.0, 8, 800)
    assert at_limit >= AWAKE.time_to_first_token(0, 100, 0, 7, 800) + full_step
    # The shipped CPU fit (limit 32): 1 -> 34 running decodes once predicted 2.41 -> 0.54 s.
    one = CPU.time_to_first_token(901, 500, 0, 1, 320_000, ahead_prompts=15)
    many = CPU.time_to_first_token(901, 500, 0, 34, 320_000, ahead_prompts=15)
    assert many > one


def test_kv_held_counts_as_decode_context_only_when_something_decodes() -> None:
    """(c) With nothing running the KV in use is prompts mid-prefill or cache, not a decode
    batch's context: it costs nothing; with decodes it is read every step."""
    for model in (C, CPU, H100):
        empty = model.time_to_first_token(600, 200, 0, 0, 0, ahead_prompts=3)
        held = model.time_to_first_token(600, 200, 0, 0, 300_000, ahead_prompts=3)
        assert held == empty
        assert model.time_to_first_token(600, 200, 0, 1, 300_000, ahead_prompts=3) > empty


WORK: st.SearchStrategy[dict[str, int]] = st.fixed_dictionaries(
    {
        "prefill_ahead": st.integers(0, 60_000),
        "uncached_tokens": st.integers(1, 20_000),
        "cached_tokens": st.integers(0, 8_000),
        "decode_seqs": st.integers(0, 300),
        "decode_context": st.integers(0, 500_000),
        "ahead_prompts": st.integers(1, 64),
    }
)


def _ttft(model: StepCost, work: dict[str, int], after_idle: bool = False) -> float:
    return model.time_to_first_token(
        work["prefill_ahead"],
        work["uncached_tokens"],
        work["cached_tokens"],
        work["decode_seqs"],
        work["decode_context"],
        work["ahead_prompts"],
        after_idle,
    )


MODELS = st.sampled_from([C, CPU, H100, CPU.model_copy(update={"decode_attention": "sum"})])


@settings(max_examples=150, deadline=None)
@given(
    MODELS,
    WORK,
    st.sampled_from(
        ["prefill_ahead", "ahead_prompts", "uncached_tokens", "decode_seqs", "decode_context"]
    ),
    st.integers(1, 5_000),
)
def test_more_work_of_any_kind_never_predicts_a_sooner_first_token(
    model: StepCost, work: dict[str, int], field: str, more: int
) -> None:
    """Monotone in each input, the others held: more queued prefill tokens, more prompts
    ahead, more uncached tokens of this prompt, more running decodes (also past
    ``max_num_seqs``), more decode context; for both decode attention modes."""
    grown = {**work, field: work[field] + more}
    assert _ttft(model, grown) >= _ttft(model, work) - 1e-12


@settings(max_examples=150, deadline=None)
@given(MODELS, WORK, st.integers(1, 16_000), st.booleans())
def test_adding_a_request_ahead_never_makes_a_first_token_sooner(
    model: StepCost, work: dict[str, int], prompt: int, decoding: bool
) -> None:
    """Another request queued ahead (its prompt and one more prompt) or already decoding (one
    more sequence holding its context): this request's first token is never sooner, even
    when it wakes an idle worker (its wake becomes the floor)."""
    idle = not (work["prefill_ahead"] or work["decode_seqs"])
    before = _ttft(model, work, after_idle=idle)
    if decoding:
        grown = {**work, "decode_seqs": work["decode_seqs"] + 1,
                 "decode_context": work["decode_context"] + prompt}  # fmt: skip
    else:
        prompts = work["ahead_prompts"] + (1 if work["prefill_ahead"] else 0)
        grown = {**work, "prefill_ahead": work["prefill_ahead"] + prompt, "ahead_prompts": prompts}
    assert _ttft(model, grown) >= before - 1e-12


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
