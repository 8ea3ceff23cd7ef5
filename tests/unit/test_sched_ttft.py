"""The `ttft` scorer: expected time to first token in seconds, from the one step cost model.

What the router relies on: the scorer's figure is admission's prediction (`predict_ttft`,
`StepCost.time_to_first_token`) with the prompt's cached prefix priced by tier; running
decodes slow a worker down where `prefill-time` cannot see them; and the figure only grows
with work queued at a worker (Hypothesis). The simulator's workers carry the model they are
timed with, so in the simulator the prediction for an idle worker is its exact TTFT, and a
busy one's is close.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.router.scheduling import (
    RequestInfo,
    SchedulingContext,
    WorkerSnapshot,
    build_profile,
)
from mainsail.router.scheduling.admission import predict_ttft
from mainsail.router.scheduling.scorers.prefill_time import PrefillTimeScorer
from mainsail.router.scheduling.scorers.ttft import TTFTScorer, expected_ttft
from mainsail.router.testing import idle_worker
from mainsail.sim.cost import GPUProfile, load_profile
from mainsail.sim.request import SimRequest
from mainsail.sim.worker import SimWorker
from mainsail.spec.kv_cost import FetchCostModel
from mainsail.spec.routing_profile import RoutingProfile, ScorerWeight
from mainsail.spec.step_cost import StepCost

pytestmark = pytest.mark.unit

KV = FetchCostModel(block_bytes=0, block_size=16)  # 0.2 ms per prefilled token
CPU = load_profile("cpu-tiny").step_cost()  # decodes cost the host ~0.1 ms each per step
H100 = load_profile("h100").step_cost()
TTFT_ONLY = RoutingProfile(scorers=[ScorerWeight(name="ttft", weight=1.0)])


def _worker(worker_id: str, cost: StepCost | None = CPU, **changes: Any) -> WorkerSnapshot:
    fields: dict[str, Any] = {
        "max_num_seqs": 64,
        "max_model_len": 16_384,
        "kv_blocks_total": 10_000,
        "kv_cost": KV,
        "step_cost": cost,
    }
    fields.update(changes)
    return idle_worker(worker_id, **fields)


def _ctx(
    prompt: int,
    *ws: WorkerSnapshot,
    hits: dict[str, int] | None = None,
    tier: dict[str, int] | None = None,
) -> SchedulingContext:
    return SchedulingContext(
        RequestInfo("r", tuple(range(prompt // 16)), prompt, 64),
        tuple(ws),
        hits or {},
        tier or {},
    )


def test_the_figure_is_admissions_prediction() -> None:
    """Fresh reports, no tier: the scorer's seconds are `predict_ttft`'s, hit for hit."""
    w = _worker("w", running=5, waiting=2, outstanding=7, pending_prefill_tokens=900,
                kv_blocks_used=120)  # fmt: skip
    ctx = _ctx(800, w, hits={"w": 20})
    expected = predict_ttft(CPU, w, 800, 20, 16)
    assert expected_ttft(ctx, ctx.workers) == [pytest.approx(expected)]


def test_running_decodes_slow_a_worker_that_prefill_time_calls_equal() -> None:
    """Same prefill queued on both; one runs 40 decodes over 30k tokens of context. On the
    CPU engine each decode costs every step ~0.1 ms plus its padded attention read: the
    `ttft` scorer sends the prompt to the other worker, `prefill-time` cannot tell them apart."""
    quiet = _worker("quiet", running=1, outstanding=1, pending_prefill_tokens=600,
                    kv_blocks_used=40)  # fmt: skip
    busy = _worker("busy", running=40, outstanding=40, pending_prefill_tokens=600,
                   kv_blocks_used=1900)  # fmt: skip
    ctx = _ctx(800, busy, quiet)
    t_busy, t_quiet = expected_ttft(ctx, ctx.workers)
    assert t_busy > 1.5 * t_quiet
    assert PrefillTimeScorer().score(ctx, ctx.workers) == [1.0, 1.0]
    assert build_profile(TTFT_ONLY, random.Random(0)).schedule(ctx).worker_id == "quiet"


def test_an_800_token_prompt_goes_behind_less_queued_work_not_fewer_requests() -> None:
    """2 requests / 500 tokens queued vs 6 requests / 100 tokens (decodes cheap on an H100):
    the old default picked the first (request counts), the `ttft` scorer the second."""
    few = _worker("few-requests", H100, running=2, outstanding=2, pending_prefill_tokens=500)
    little = _worker("little-work", H100, running=6, outstanding=6, pending_prefill_tokens=100)
    ctx = _ctx(800, few, little)
    assert build_profile(RoutingProfile(), random.Random(0)).schedule(ctx).worker_id == (
        "few-requests"
    )
    assert build_profile(TTFT_ONLY, random.Random(0)).schedule(ctx).worker_id == "little-work"


def test_in_flight_requests_missing_from_the_report_count_as_prompts_ahead() -> None:
    """A burst between two reports: the router's own count says 6 in flight where the worker
    reported none; those prompts' prefill (router-counted) and their chunks are ahead."""
    stale = _worker("stale", outstanding=6, pending_prefill_tokens=6 * 300)
    reported = _worker("reported", waiting=6, outstanding=6, pending_prefill_tokens=6 * 300)
    ctx = _ctx(300, stale, reported)
    a, b = expected_ttft(ctx, ctx.workers)
    assert a == pytest.approx(b)


def test_a_cached_prefix_is_free_on_device_and_costs_the_fetch_from_the_tier() -> None:
    kv = FetchCostModel(block_bytes=1 << 20, block_size=16, rtt_s=1e-3, bandwidth_bps=1e9,
                        prefill_s_per_token=1e-3)  # fmt: skip
    slow = StepCost(step_overhead_s=1e-3, token_s=1e-3, attn_pair_s=0, kv_read_s=0)
    device = _worker("device", slow, kv_cost=kv)
    tier = _worker("tier", slow, kv_cost=kv, kv_tier_id="t", kv_fetch_policy="auto")
    cold = _worker("cold", slow, kv_cost=kv)
    prompt = 16 * 40
    ctx = _ctx(prompt, device, tier, cold, hits={"device": 39}, tier={"tier": 39, "cold": 39})
    t_device, t_tier, t_cold = expected_ttft(ctx, ctx.workers)
    assert t_device < t_tier < t_cold
    fetched = predict_ttft(slow, tier, prompt, 39, 16)
    assert t_tier == pytest.approx(kv.fetch_seconds(39) + fetched)


def test_without_a_step_cost_it_ranks_like_prefill_time_when_nothing_decodes() -> None:
    ws = [
        _worker(f"w{i}", None, pending_prefill_tokens=q, waiting=1 if q else 0, outstanding=1)
        for i, q in enumerate((0, 300, 2000))
    ]
    ctx = _ctx(640, *ws, hits={"w1": 30})
    ttft = expected_ttft(ctx, ctx.workers)
    prefill = [0.0002 * (640 - 0), 0.0002 * (300 + 640 - 480), 0.0002 * (2000 + 640)]
    # The prompt ahead decodes once prefilled: its budget token in this prompt's steps.
    assert ttft == pytest.approx(prefill, rel=1e-3)
    assert ttft[0] == pytest.approx(prefill[0])


def test_scores_are_relative_headroom_in_unit_range() -> None:
    ws = [_worker("a"), _worker("b", running=30, outstanding=30, pending_prefill_tokens=9000)]
    scores = TTFTScorer().score(_ctx(400, *ws), ws)
    assert scores[0] == 1.0 and 0.0 <= scores[1] < 1.0
    with pytest.raises(ValueError, match="slack_tokens"):
        TTFTScorer(slack_tokens=0)


LOADS = st.fixed_dictionaries(
    {
        "running": st.integers(0, 100),
        "waiting": st.integers(0, 16),
        "pending_prefill_tokens": st.integers(0, 40_000),
        "kv_blocks_used": st.integers(0, 20_000),
    }
)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([H100, CPU]),
    LOADS,
    st.sampled_from(["running", "waiting", "pending_prefill_tokens", "kv_blocks_used"]),
    st.integers(1, 5_000),
    st.integers(1, 20_000),
    st.integers(0, 1_200),
)
def test_more_work_queued_at_a_worker_never_makes_its_first_token_sooner(
    cost: StepCost, load: dict[str, Any], field: str, more: int, prompt: int, hit: int
) -> None:
    """Monotone in each kind of work the worker holds — running decodes (past the batch
    limit too), prompts waiting, prefill tokens queued, KV held — the others fixed, for GPU
    (``sum``) and CPU (``padded``) decode attention alike."""
    base = _worker("w", cost, outstanding=load["running"] + load["waiting"], **load)
    changed: dict[str, Any] = {field: load[field] + more}
    grown = dataclasses.replace(base, **changed)
    grown = dataclasses.replace(grown, outstanding=grown.running + grown.waiting)
    hits = {"w": min(hit, prompt // 16)}
    (before,) = expected_ttft(_ctx(prompt, base, hits=hits), [base])
    (after,) = expected_ttft(_ctx(prompt, grown, hits=hits), [grown])
    assert after >= before - 1e-12


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([H100, CPU]), LOADS, st.integers(1, 8_000), st.integers(1, 8_000),
       st.booleans())  # fmt: skip
def test_adding_a_request_never_makes_anothers_first_token_sooner(
    cost: StepCost, load: dict[str, Any], prompt: int, other: int, decoding: bool
) -> None:
    """Another request sent to the worker — still waiting (a prompt and its tokens queued)
    or already decoding (a running sequence and its blocks) — never brings this one's
    predicted first token forward, idle worker included (the wake is then the floor)."""
    base = _worker("w", cost, outstanding=load["running"] + load["waiting"], **load)
    if decoding:
        grown = dataclasses.replace(base, running=base.running + 1,
                                    kv_blocks_used=base.kv_blocks_used + other // 16)  # fmt: skip
    else:
        queued = base.pending_prefill_tokens + other
        grown = dataclasses.replace(base, waiting=base.waiting + 1, pending_prefill_tokens=queued)
    grown = dataclasses.replace(grown, outstanding=base.outstanding + 1)
    (before,) = expected_ttft(_ctx(prompt, base), [base])
    (after,) = expected_ttft(_ctx(prompt, grown), [grown])
    assert after >= before - 1e-12


@settings(max_examples=200, deadline=None)
@given(LOADS, st.integers(1, 8_000), st.integers(0, 500), st.integers(1, 500))
def test_a_longer_cached_prefix_never_makes_the_first_token_later(
    load: dict[str, Any], prompt: int, hit: int, more: int
) -> None:
    w = _worker("w", outstanding=load["running"] + load["waiting"], **load)
    blocks = prompt // 16
    (short,) = expected_ttft(_ctx(prompt, w, hits={"w": min(hit, blocks)}), [w])
    (long,) = expected_ttft(_ctx(prompt, w, hits={"w": min(hit + more, blocks)}), [w])
    assert long <= short + 1e-12


def test_in_the_simulator_an_idle_workers_prediction_is_its_ttft() -> None:
    """The simulated worker hands the router the model it is timed with, so for a request on
    an idle worker the scorer's figure is exactly the TTFT the simulator produces."""
    profile = GPUProfile(name="t", step_overhead_s=0.01, token_s=1e-4, attn_pair_s=1e-8,
                         kv_read_s=1e-6, kv_capacity_tokens=100_000, max_num_seqs=8,
                         max_batched_tokens=1024)  # fmt: skip
    events: list[tuple[float, int, int]] = []
    worker = SimWorker(0, profile, 16, lambda at, i, v: events.append((at, i, v)), lambda r: None)
    snap = worker.snapshot()
    assert snap.step_cost == profile.step_cost()
    ctx = _ctx(1500, snap)
    (predicted,) = expected_ttft(ctx, ctx.workers)
    req = SimRequest(0, 0.0, 1500, 5, list(range(93)))
    worker.enqueue(req, 0.0)
    for _ in range(100):
        if req.first_token == req.first_token and req.first_token > 0:  # not NaN: done
            break
        at, _, version = min(events)
        events.remove((at, 0, version))
        worker.step_end(at, version)
    assert req.first_token == pytest.approx(predicted)


def _simulated(
    profile: GPUProfile, decodes: int, ahead: int, ahead_len: int, prompt: int
) -> tuple[float, float]:
    """(predicted, simulated) TTFT of a ``prompt``-token request sent to a simulated worker
    running ``decodes`` sequences (200-token prompts) with ``ahead`` prompts queued."""
    events: list[tuple[float, int, int]] = []
    worker = SimWorker(0, profile, 16, lambda at, i, v: events.append((at, i, v)), lambda r: None)
    now = 0.0
    index = iter(range(10_000))

    def run_until(done: Callable[[], bool]) -> None:
        nonlocal now
        for _ in range(100_000):
            if done():
                return
            at, _, version = min(events)
            events.remove((at, 0, version))
            now = at
            worker.step_end(at, version)
        raise AssertionError("the simulated worker did not get there")

    def request(tokens: int, output: int, salt: int) -> SimRequest:
        return SimRequest(next(index), now, tokens, output, [salt + b for b in range(tokens // 16)])

    running = [request(200, 1500, 10**6 * (j + 1)) for j in range(decodes)]
    for r in running:
        worker.enqueue(r, now)
    run_until(lambda: not any(math.isnan(r.first_token) for r in running))
    for j in range(ahead):
        worker.enqueue(request(ahead_len, 1500, 10**9 + 10**5 * j), now)
    ctx = _ctx(prompt, worker.snapshot())
    (predicted,) = expected_ttft(ctx, ctx.workers)
    req, start = request(prompt, 5, 7 * 10**9), now
    worker.enqueue(req, now)
    run_until(lambda: not math.isnan(req.first_token))
    return predicted, req.first_token - start


@pytest.mark.parametrize(
    ("decodes", "ahead", "ahead_len", "prompt"),
    [
        (0, 4, 2000, 1000),
        (64, 8, 3000, 2000),
        (8, 8, 512, 256),
        (250, 10, 2000, 2000),
        (2, 30, 100, 500),
    ],
)
def test_in_the_simulator_a_busy_workers_prediction_is_close_to_its_ttft(
    decodes: int, ahead: int, ahead_len: int, prompt: int
) -> None:
    """The closed form against the simulator's step-by-step engine (H100 profile), with
    decodes running and prompts queued ahead that join them: within 15 %."""
    predicted, simulated = _simulated(load_profile("h100"), decodes, ahead, ahead_len, prompt)
    assert predicted == pytest.approx(simulated, rel=0.15)
